"""The Serve adapter on real `AutoscalingContext`s and Serve's own policy plumbing; no Ray cluster."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from autoscaling import METRIC_NAMES, LoadSignals
from autoscaling.serve_policy import PENDING_STATE_KEY, LLMAutoscalingPolicy

IMPORT_PATH = "autoscaling.serve_policy:LLMAutoscalingPolicy"
POLICY_KWARGS: dict[str, Any] = {
    "min_replicas": 0,
    "max_replicas": 4,
    "target_queue_per_replica": 4.0,
    "kv_usage_target": 0.85,
    "idle_timeout_s": 300.0,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 60.0,
}
DEPLOYMENT = DeploymentID(name="LLMServer:tiny", app_name="switchyard")
# Serve's delays off: the policy keeps its own, as the deployment config sets it up.
SERVE_CONFIG = AutoscalingConfig(
    min_replicas=0,
    max_replicas=4,
    upscale_delay_s=0,
    downscale_delay_s=0,
    downscale_to_zero_delay_s=0,
    policy=AutoscalingPolicy(policy_function=IMPORT_PATH, policy_kwargs=POLICY_KWARGS),
)


def replica_id(name: str) -> ReplicaID:
    return ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)


def context(
    metrics: dict[str, dict[ReplicaID, float]] | None,
    running: list[ReplicaID],
    *,
    target: int,
    queued: float = 0.0,
    policy_state: dict[str, Any] | None = None,
    now: float = 1000.0,
) -> AutoscalingContext:
    """A context as Serve's controller builds one for a deployment."""
    # Serve's count of ongoing requests: queued at handles plus running at replicas.
    ongoing = queued + sum((metrics or {}).get("num_running", {}).values())
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=len(running),
        target_num_replicas=target,
        running_replicas=running,
        total_num_requests=ongoing,
        total_queued_requests=queued,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=SERVE_CONFIG.min_replicas,
        capacity_adjusted_max_replicas=SERVE_CONFIG.max_replicas,
        policy_state={} if policy_state is None else policy_state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=SERVE_CONFIG,
    )


def reports(**per_replica: tuple[float, float, float, float]) -> dict[str, dict[ReplicaID, float]]:
    """Aggregated metrics from (waiting, running, kv_usage, idle_s) per replica name."""
    metrics: dict[str, dict[ReplicaID, float]] = {name: {} for name in METRIC_NAMES}
    for name, (waiting, running, kv_usage, idle_s) in per_replica.items():
        signals = LoadSignals(num_waiting=waiting, num_running=running, kv_usage=kv_usage, idle_s=idle_s)
        for metric, value in signals.to_metrics().items():
            metrics[metric][replica_id(name)] = value
    return metrics


R1, R2 = replica_id("r1"), replica_id("r2")


@pytest.fixture
def policy() -> LLMAutoscalingPolicy:
    return LLMAutoscalingPolicy(**POLICY_KWARGS)


@pytest.fixture
def instant_policy() -> LLMAutoscalingPolicy:
    """Without delays, so that one call shows what the signals call for."""
    return LLMAutoscalingPolicy(**{**POLICY_KWARGS, "upscale_delay_s": 0.0, "downscale_delay_s": 0.0})


def test_serve_builds_the_policy_class_from_its_import_path_and_kwargs() -> None:
    built = _resolve_policy_callable(SERVE_CONFIG.policy)
    assert isinstance(built, LLMAutoscalingPolicy)
    assert built.settings.target_queue_per_replica == 4.0
    assert built.settings.idle_timeout_s == 300.0


def test_invalid_policy_kwargs_fail_when_serve_builds_the_policy() -> None:
    bad = AutoscalingPolicy(policy_function=IMPORT_PATH, policy_kwargs={**POLICY_KWARGS, "kv_usage_target": 2})
    with pytest.raises(ValueError, match=r"kv_usage_target must be in \(0, 1\], got 2"):
        _resolve_policy_callable(bad)


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        pytest.param(
            context(reports(r1=(4, 2, 0.1, 0), r2=(4, 2, 0.1, 0)), [R1, R2], target=2),
            3,
            id="waiting and running summed over every replica",
        ),
        pytest.param(
            context(reports(r1=(0, 4, 0.1, 0)), [R1], target=1, queued=4), 2, id="requests queued at handles count"
        ),
        pytest.param(context(reports(r1=(0, 1, 0.95, 0)), [R1], target=1), 2, id="a full KV cache adds a replica"),
        pytest.param(context(reports(r1=(9, 0, 0.1, 0)), [R1], target=1), 3, id="engine waiting, nothing running: up"),
        pytest.param(context(None, [R1, R2], target=2, queued=50), 2, id="no metrics at all: hold"),
        pytest.param(
            context(reports(r1=(50, 0, 0.1, 0)), [R1, R2], target=2), 2, id="a replica missing from the metrics: hold"
        ),
        pytest.param(
            context({**reports(r1=(50, 0, 0.1, 0)), "kv_usage": {}}, [R1], target=1),
            1,
            id="a replica missing one metric: hold",
        ),
        pytest.param(
            context(reports(r1=(0, 0, 0, 400), r2=(0, 0, 0, 300)), [R1, R2], target=2),
            0,
            id="every replica idle past the timeout: zero",
        ),
        pytest.param(
            context(reports(r1=(0, 0, 0, 400), r2=(0, 0, 0, 10)), [R1, R2], target=2),
            1,
            id="one recently busy replica: one kept warm",
        ),
    ],
)
def test_decision_from_serve_context(
    instant_policy: LLMAutoscalingPolicy, ctx: AutoscalingContext, expected: int
) -> None:
    num_replicas, _ = instant_policy(ctx)
    assert num_replicas == expected


@pytest.mark.parametrize("metrics", [None, {}], ids=["metrics None", "metrics empty"])
def test_zero_replicas_and_a_queued_request_get_one_at_once(
    policy: LLMAutoscalingPolicy, metrics: dict[str, dict[ReplicaID, float]] | None
) -> None:
    num_replicas, state = policy(context(metrics, [], target=0, queued=1))
    assert num_replicas == 1
    assert PENDING_STATE_KEY not in state


def test_pending_move_round_trips_through_policy_state(policy: LLMAutoscalingPolicy) -> None:
    busy = reports(r1=(8, 4, 0.1, 0))  # 12 requests: wants 3
    serve_keys = {"__decision_counters": 0, "__decision_timestamp": None}
    first, state = policy(context(busy, [R1], target=1, policy_state=dict(serve_keys), now=100.0))
    assert first == 1
    assert state[PENDING_STATE_KEY] == {"direction": "up", "since": 100.0}
    assert {key: state[key] for key in serve_keys} == serve_keys

    waiting, state = policy(context(busy, [R1], target=1, policy_state=state, now=109.0))
    assert waiting == 1
    assert state[PENDING_STATE_KEY]["since"] == 100.0

    done, state = policy(context(busy, [R1], target=1, policy_state=state, now=110.0))
    assert done == 3
    assert PENDING_STATE_KEY not in state
    assert {key: state[key] for key in serve_keys} == serve_keys


def test_serve_wrapper_keeps_our_delay_and_our_state(policy: LLMAutoscalingPolicy) -> None:
    """Serve wraps every custom policy with its own delays; at 0 they must leave ours in charge."""
    wrapped = _apply_autoscaling_config(policy)
    busy = reports(r1=(8, 4, 0.1, 0))
    first, state = wrapped(context(busy, [R1], target=1, now=100.0))
    assert first == 1
    assert state[PENDING_STATE_KEY] == {"direction": "up", "since": 100.0}
    later, state = wrapped(context(busy, [R1], target=1, policy_state=state, now=110.0))
    assert later == 3


def test_serve_wrapper_scales_an_idle_fleet_to_zero_through_one(policy: LLMAutoscalingPolicy) -> None:
    """Serve lets a target above one fall to one at most; zero comes on its next control-loop tick."""
    wrapped = _apply_autoscaling_config(policy)
    idle = reports(r1=(0, 0, 0, 400), r2=(0, 0, 0, 400))
    first, state = wrapped(context(idle, [R1, R2], target=2))
    assert first == 1
    second, _ = wrapped(context(reports(r1=(0, 0, 0, 400)), [R1], target=1, policy_state=state))
    assert second == 0


def test_serve_answers_for_us_at_zero_replicas_and_keeps_our_state(policy: LLMAutoscalingPolicy) -> None:
    """Serve's cold-start path (no replica running, requests ongoing) skips the policy entirely."""
    wrapped = _apply_autoscaling_config(policy)
    state = {PENDING_STATE_KEY: {"direction": "up", "since": 1.0}}
    num_replicas, returned = wrapped(context(None, [], target=0, queued=2, policy_state=state))
    assert num_replicas == 1
    assert returned == state


def test_idleness_counts_from_the_last_request_even_on_a_replica_since_scaled_away(
    policy: LLMAutoscalingPolicy,
) -> None:
    busy_elsewhere = reports(r1=(0, 0, 0, 400), r2=(0, 1, 0.1, 0))
    _, state = policy(context(busy_elsewhere, [R1, R2], target=2, now=1000.0))
    # r2 (which served that request) is gone; r1 alone reports a long idleness, but the model's
    # last request was only 290 s ago, under the 300 s idle timeout.
    long_idle = reports(r1=(0, 0, 0, 690))
    early, state = policy(context(long_idle, [R1], target=1, policy_state=state, now=1290.0))
    assert early == 1
    late, _ = policy(context(reports(r1=(0, 0, 0, 701)), [R1], target=1, policy_state=state, now=1301.0))
    assert late == 0
