"""The adapter Serve's `autoscaling_config.policy` points at: AutoscalingContext -> `decide` -> Serve.

    autoscaling_config:
      policy:
        policy_function: autoscaling.serve_policy:LLMAutoscalingPolicy
        policy_kwargs: {min_replicas: 0, max_replicas: 4, target_queue_per_replica: 8, ...}

Serve passes `policy_kwargs` only to a class (it builds one instance per deployment config, in the
controller), so the policy is a class. Serve wraps whatever the policy returns with its own bounds,
scaling factors and delays; the deployment sets Serve's delays to 0 and this policy keeps its own,
so that a starved model scales up at once while a busy one waits out `upscale_delay_s`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from autoscaling.metrics import AutoscalingMetrics
from autoscaling.policy import PendingScale, ScalingSettings, decide
from autoscaling.signals import METRIC_NAMES, LoadSignals, ScalingSignals

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

__all__ = ["PENDING_STATE_KEY", "LLMAutoscalingPolicy", "signals_from_context"]

# The policy runs in the Serve controller; its decisions belong in the controller's log.
logger = logging.getLogger("ray.serve")

# Our entry in Serve's policy_state, which also holds Serve's own delay counters (keys "__decision_*").
# Value: {"direction": "up" | "down", "since": seconds}, or absent when no move is pending.
PENDING_STATE_KEY = "switchyard_pending_scale"
# When the deployment last had a request on any replica (seconds, Serve's clock), so that idleness
# counts from it even after the replica that served it was scaled away.
LAST_REQUEST_STATE_KEY = "switchyard_last_request_at"


class LLMAutoscalingPolicy:
    """A Serve custom autoscaling policy over LLMServer's engine signals."""

    def __init__(self, model: str | None = None, **policy_kwargs: Any) -> None:
        """`model`: the `model` label of the decisions' metrics (None records none)."""
        # Raises ValueError (or TypeError for an unknown name) here, in the controller, when the
        # deployment is created; validate the same kwargs at the config edge to fail at `serve run`.
        self.settings = ScalingSettings(**policy_kwargs)
        self.metrics = AutoscalingMetrics(model) if model is not None else None

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time if ctx.current_time is not None else time.time()
        signals = signals_from_context(ctx)
        last_request_at = _last_request_at(signals, ctx.policy_state.get(LAST_REQUEST_STATE_KEY), now)
        if last_request_at is not None:
            signals = dataclasses.replace(signals, since_last_request_s=now - last_request_at)
        decision = decide(signals, self.settings, _read_pending(ctx.policy_state), now)
        if decision.num_replicas != ctx.target_num_replicas:
            logger.info("autoscaling %s: %s", ctx.deployment_id, decision.reason)
        if self.metrics is not None:
            try:
                self.metrics.record(decision, len(ctx.running_replicas), self.settings.max_replicas)
            except Exception:  # noqa: BLE001 - metrics are advisory: the decision stands
                logger.exception("recording the autoscaling metrics of %s failed", ctx.deployment_id)
        # Start from the state Serve handed in so that its own keys survive the round trip.
        state = dict(ctx.policy_state)
        state.pop(PENDING_STATE_KEY, None)
        if decision.pending is not None:
            state[PENDING_STATE_KEY] = {"direction": decision.pending.direction, "since": decision.pending.since}
        state[LAST_REQUEST_STATE_KEY] = last_request_at
        return decision.num_replicas, state


def signals_from_context(ctx: AutoscalingContext) -> ScalingSignals:
    """The policy's view of a Serve AutoscalingContext.

    A running replica missing any of the LoadSignals metrics (Serve has no report from it yet, or
    `aggregated_metrics` is None) is counted in `num_replicas_missing_metrics`, not guessed at.
    """
    metrics = ctx.aggregated_metrics or {}
    replicas: list[LoadSignals] = []
    num_missing = 0
    for replica_id in ctx.running_replicas:
        signals = LoadSignals.from_metrics({name: metrics.get(name, {}).get(replica_id) for name in METRIC_NAMES})
        if signals is None:
            num_missing += 1
            continue
        replicas.append(signals)
    return ScalingSignals(
        num_running_replicas=ctx.current_num_replicas,
        target_num_replicas=ctx.target_num_replicas,
        # Typed optional by Serve, which always fills it; None reads as nothing queued.
        num_queued_requests=ctx.total_queued_requests or 0.0,
        replicas=tuple(replicas),
        num_replicas_missing_metrics=num_missing,
    )


def _last_request_at(signals: ScalingSignals, remembered: float | None, now: float) -> float | None:
    """The latest time any replica had a request: now while any request is in, else what the
    replicas report, never earlier than what was remembered."""
    if signals.num_requests > 0:
        return now
    if not signals.replicas:
        return remembered
    seen = now - signals.min_idle_s
    return seen if remembered is None else max(remembered, seen)


def _read_pending(policy_state: dict[str, Any]) -> PendingScale | None:
    entry = policy_state.get(PENDING_STATE_KEY)
    if entry is None:
        return None
    return PendingScale(direction=entry["direction"], since=entry["since"])
