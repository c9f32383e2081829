"""LLM-aware autoscaling as a pure function: signals + settings + pending move + now -> decision.

One call:
    desired  = ceil(requests waiting or running / target_queue_per_replica)
               raised to one replica more than run when mean KV usage is above kv_usage_target
               kept within [floor, max_replicas]; floor drops to min_replicas only after idle_timeout_s
    move     = desired against Serve's current target: up, down or hold
    when     = at once if requests wait and nothing runs (up) or the idle timeout has passed (down);
               otherwise once the same direction has been wanted for upscale_delay_s / downscale_delay_s
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from autoscaling.signals import ScalingSignals

__all__ = [
    "CAUSES",
    "Cause",
    "Direction",
    "PendingScale",
    "ScalingDecision",
    "ScalingSettings",
    "decide",
    "desired_cause",
    "desired_num_replicas",
    "is_idle_past_timeout",
    "is_starved",
]

Direction = Literal["up", "down"]
# What a decision rests on: the queue (requests per replica), KV usage above its target, an idle
# timeout passed, requests waiting with nothing running them, or replicas that have not reported.
Cause = Literal["queue", "kv_usage", "idle", "starved", "missing_metrics"]
CAUSES: tuple[Cause, ...] = ("queue", "kv_usage", "idle", "starved", "missing_metrics")


@dataclass(frozen=True)
class ScalingSettings:
    """How one deployment scales. Invalid values raise `ValueError` naming the field and the value."""

    # Fewest replicas; 0 lets an idle model cost nothing.
    min_replicas: int
    # Most replicas.
    max_replicas: int
    # Engine requests (waiting + running) one replica should carry; more load adds replicas.
    target_queue_per_replica: float = 16.0
    # Mean KV usage (0..1) above which replicas need help even with a short queue: a full cache
    # preempts and stalls requests before the queue shows it.
    kv_usage_target: float = 0.9
    # Seconds without any request anywhere before scaling to min_replicas (zero, typically).
    idle_timeout_s: float = 300.0
    # Seconds a wish to scale up must persist, so a burst does not start a replica (minutes of
    # weight loading) it will not need.
    upscale_delay_s: float = 5.0
    # Seconds a wish to scale down must persist, so a lull does not drop a replica that is needed again.
    downscale_delay_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < 1:
            raise ValueError(f"max_replicas must be >= 1, got {self.max_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas must be >= min_replicas ({self.min_replicas}), got {self.max_replicas}")
        # Written as `not (x > 0)` so that NaN is refused too.
        if not self.target_queue_per_replica > 0:
            raise ValueError(f"target_queue_per_replica must be > 0, got {self.target_queue_per_replica}")
        if not 0 < self.kv_usage_target <= 1:
            raise ValueError(f"kv_usage_target must be in (0, 1], got {self.kv_usage_target}")
        for name in ("idle_timeout_s", "upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class PendingScale:
    """A move the policy wants but has not made yet, waiting out its delay."""

    direction: Direction
    # `now` of the first decision in the current run of decisions wanting this direction.
    since: float


@dataclass(frozen=True)
class ScalingDecision:
    """What to set the target to, why, and what to remember for the next call."""

    num_replicas: int
    # One line for the controller log.
    reason: str
    # The move still waiting out its delay; None when nothing is pending. Pass it to the next call.
    pending: PendingScale | None
    # Why: what the decision (or the move it waits to make) rests on.
    cause: Cause
    # Replicas the load calls for now, before any delay (None while replicas have not reported).
    desired: int | None


def decide(
    signals: ScalingSignals, settings: ScalingSettings, pending: PendingScale | None, now: float
) -> ScalingDecision:
    """The replica count for `signals` at time `now` (seconds), given the move pending since the last call."""
    target = signals.target_num_replicas
    if signals.num_replicas_missing_metrics > 0:
        # Deciding on part of the fleet would under-count its load. The pending move is kept:
        # no news is not a change of mind.
        reason = f"{signals.num_replicas_missing_metrics} running replica(s) have not reported metrics yet"
        return ScalingDecision(target, f"hold at {target}: {reason}", pending, "missing_metrics", None)

    desired = desired_num_replicas(signals, settings)
    cause = desired_cause(signals, settings)
    load = f"{signals.num_requests:.1f} requests, mean KV usage {signals.mean_kv_usage:.2f}"
    if desired > target and is_starved(signals):
        reason = f"{signals.num_waiting_requests:.1f} requests wait and none runs"
        return ScalingDecision(desired, f"up to {desired} at once: {reason}", None, "starved", desired)
    if desired > target:
        return _after_delay("up", desired, settings.upscale_delay_s, target, pending, now, load, cause)
    if desired < target and is_idle_past_timeout(signals, settings):
        reason = f"no requests, idle for {signals.min_idle_s:.0f}s >= idle_timeout_s {settings.idle_timeout_s}"
        return ScalingDecision(desired, f"down to {desired} at once: {reason}", None, "idle", desired)
    if desired < target:
        return _after_delay("down", desired, settings.downscale_delay_s, target, pending, now, load, cause)
    return ScalingDecision(target, f"hold at {target}: {load}", None, cause, desired)


def desired_num_replicas(signals: ScalingSignals, settings: ScalingSettings) -> int:
    """Replicas the current load calls for, before any delay, within the settings' bounds."""
    desired = math.ceil(signals.num_requests / settings.target_queue_per_replica)
    if signals.mean_kv_usage > settings.kv_usage_target:
        # One replica more than run; while new ones are still starting (target above running),
        # that help is already on its way, so hold the target rather than add more.
        desired = max(desired, signals.num_running_replicas + 1, signals.target_num_replicas)
    return min(max(desired, _fewest_replicas(signals, settings)), settings.max_replicas)


def desired_cause(signals: ScalingSignals, settings: ScalingSettings) -> Cause:
    """What `desired_num_replicas` rests on: KV usage when it raised the count above the queue's
    call, the idle timeout when it let the floor drop to min_replicas, else the queue."""
    by_queue = math.ceil(signals.num_requests / settings.target_queue_per_replica)
    if signals.mean_kv_usage > settings.kv_usage_target and desired_num_replicas(signals, settings) > by_queue:
        return "kv_usage"
    if is_idle_past_timeout(signals, settings):
        return "idle"
    return "queue"


def is_starved(signals: ScalingSignals) -> bool:
    """Requests wait and nothing serves them: no replica runs, or none of their engines runs a request."""
    return signals.num_waiting_requests > 0 and signals.num_running_requests == 0


def is_idle_past_timeout(signals: ScalingSignals, settings: ScalingSettings) -> bool:
    """No request anywhere, and every replica has had none for at least `idle_timeout_s`.

    Idle time is what the replicas measure rather than a timer kept here, so it survives Serve
    resetting policy state (it does on every redeploy). Under Serve's default mean aggregation the
    reported `idle_s` lags the true one by about half the look-back window; scale-to-zero comes that
    much later. No replica reporting means nobody measured idleness, so it does not count.
    """
    has_reports = len(signals.replicas) > 0
    return has_reports and signals.num_requests == 0 and signals.min_idle_s >= settings.idle_timeout_s


def _fewest_replicas(signals: ScalingSignals, settings: ScalingSettings) -> int:
    if is_idle_past_timeout(signals, settings):
        return settings.min_replicas
    # Not idle for long enough: keep one replica warm if there is one. (Any request at all already
    # calls for one through the load: ceil of a positive number is at least 1.)
    return max(settings.min_replicas, min(signals.target_num_replicas, 1))


def _after_delay(
    direction: Direction,
    desired: int,
    delay_s: float,
    target: int,
    pending: PendingScale | None,
    now: float,
    load: str,
    cause: Cause,
) -> ScalingDecision:
    """Move to `desired` once `direction` has been wanted for `delay_s`; until then hold `target`.
    A pending move in the other direction does not count: the timer restarts."""
    since = pending.since if pending is not None and pending.direction == direction else now
    waited_s = now - since
    if waited_s >= delay_s:
        return ScalingDecision(desired, f"{direction} to {desired} after {waited_s:.0f}s: {load}", None, cause, desired)
    reason = f"hold at {target}, {direction} to {desired} in {delay_s - waited_s:.0f}s: {load}"
    return ScalingDecision(target, reason, PendingScale(direction, since), cause, desired)
