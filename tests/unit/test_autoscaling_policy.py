"""The pure autoscaling policy: hand-made signals in, replica counts and pending moves out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaling import LoadSignals, PendingScale, ScalingSettings, ScalingSignals, decide

SETTINGS = ScalingSettings(
    min_replicas=0,
    max_replicas=4,
    target_queue_per_replica=4.0,
    kv_usage_target=0.85,
    idle_timeout_s=300.0,
    upscale_delay_s=10.0,
    downscale_delay_s=60.0,
)


def replica(waiting: float = 0.0, running: float = 0.0, kv_usage: float = 0.1, idle_s: float = 0.0) -> LoadSignals:
    return LoadSignals(num_waiting=waiting, num_running=running, kv_usage=kv_usage, idle_s=idle_s)


def fleet(
    *replicas: LoadSignals, queued: float = 0.0, target: int | None = None, num_missing: int = 0
) -> ScalingSignals:
    """A deployment whose running replicas are `replicas` plus `num_missing` silent ones; the target
    defaults to the running count (a fleet at rest)."""
    num_running = len(replicas) + num_missing
    return ScalingSignals(
        num_running_replicas=num_running,
        target_num_replicas=num_running if target is None else target,
        num_queued_requests=queued,
        replicas=tuple(replicas),
        num_replicas_missing_metrics=num_missing,
    )


def replay(signals: ScalingSignals, times: list[float], settings: ScalingSettings = SETTINGS) -> list[int]:
    """The decisions for unchanging `signals` at each of `times`, the target and the pending move
    carried from one call to the next as Serve carries them."""
    target = signals.target_num_replicas
    pending: PendingScale | None = None
    decisions: list[int] = []
    for now in times:
        decision = decide(replace(signals, target_num_replicas=target), settings, pending, now)
        target, pending = decision.num_replicas, decision.pending
        decisions.append(target)
    return decisions


@pytest.mark.parametrize(
    ("signals", "settings", "expected"),
    [
        pytest.param(
            fleet(replica(idle_s=300.0), replica(idle_s=900.0)), SETTINGS, 0, id="idle past the timeout: zero"
        ),
        pytest.param(fleet(replica(idle_s=299.0)), SETTINGS, 1, id="idle short of the timeout: one kept"),
        pytest.param(
            fleet(replica(idle_s=900.0), replica(running=1.0)), SETTINGS, 2, id="one busy replica blocks zero"
        ),
        pytest.param(fleet(replica(idle_s=900.0), queued=1.0), SETTINGS, 1, id="a request queued at a handle"),
        pytest.param(
            fleet(replica(idle_s=900.0), replica(idle_s=900.0), replica(idle_s=900.0)),
            replace(SETTINGS, min_replicas=2),
            2,
            id="idle goes to min_replicas, not below",
        ),
        pytest.param(fleet(queued=1.0), SETTINGS, 1, id="zero replicas, one queued request: one at once"),
        pytest.param(fleet(queued=9.0), SETTINGS, 3, id="zero replicas, a burst: what it needs at once"),
        pytest.param(fleet(replica(waiting=9.0)), SETTINGS, 3, id="engines wait and run nothing: up at once"),
        pytest.param(
            fleet(replica(waiting=8.0, running=4.0)), SETTINGS, 1, id="queue above target while running: delayed"
        ),
        pytest.param(fleet(queued=100.0), SETTINGS, 4, id="a starved burst stops at max_replicas"),
        pytest.param(
            fleet(replica(waiting=50.0), num_missing=1), SETTINGS, 2, id="missing metrics hold, whatever the queue"
        ),
        pytest.param(fleet(), SETTINGS, 0, id="zero replicas, nothing queued: stay at zero"),
    ],
)
def test_first_decision(signals: ScalingSignals, settings: ScalingSettings, expected: int) -> None:
    """One call with nothing pending."""
    assert decide(signals, settings, None, now=1000.0).num_replicas == expected


@pytest.mark.parametrize(
    ("signals", "times", "expected"),
    [
        pytest.param(
            fleet(replica(waiting=4.0, running=2.0), replica(waiting=4.0, running=2.0)),
            [0.0, 9.9, 10.0],
            [2, 2, 3],
            id="queue above target: up once the delay has passed",
        ),
        pytest.param(
            fleet(replica(running=1.0, kv_usage=0.9), replica(running=1.0, kv_usage=0.95)),
            [0.0, 9.9, 10.0, 10.1],
            [2, 2, 3, 3],
            id="KV pressure under a short queue: one more after the delay",
        ),
        pytest.param(
            fleet(replica(running=1.0, kv_usage=0.9), target=2),
            [0.0, 10.0, 100.0],
            [2, 2, 2],
            id="KV pressure while a replica starts: hold",
        ),
        pytest.param(
            fleet(replica(running=2.0), replica(running=1.0), replica()),
            [0.0, 59.0, 60.0],
            [3, 3, 1],
            id="light load: down once the downscale delay has passed",
        ),
        pytest.param(
            fleet(replica(idle_s=30.0), replica(idle_s=30.0)),
            [0.0, 60.0, 200.0],
            [2, 1, 1],
            id="no requests, short of the idle timeout: down to one, not zero",
        ),
        pytest.param(
            fleet(replica(waiting=40.0, running=4.0)), [0.0, 10.0, 20.0], [1, 4, 4], id="never above max_replicas"
        ),
        pytest.param(fleet(target=1), [0.0, 60.0, 1000.0], [1, 1, 1], id="a starting replica without load is kept"),
        pytest.param(
            fleet(replica(running=4.0), replica(running=4.0)), [0.0, 100.0, 1000.0], [2, 2, 2], id="at target: stay"
        ),
    ],
)
def test_timeline(signals: ScalingSignals, times: list[float], expected: list[int]) -> None:
    """Unchanging signals over time: the replicas decided at each of `times`."""
    assert replay(signals, times) == expected


def test_idle_fleet_scales_to_zero_at_the_timeout_and_not_before() -> None:
    def idle_for(idle_s: float) -> ScalingSignals:
        return fleet(replica(idle_s=idle_s), target=1)

    assert decide(idle_for(299.9), SETTINGS, None, now=0.0).num_replicas == 1
    decision = decide(idle_for(300.0), SETTINGS, None, now=0.0)
    assert decision.num_replicas == 0
    assert decision.pending is None


def test_starved_scale_up_ignores_the_upscale_delay() -> None:
    slow = replace(SETTINGS, upscale_delay_s=3600.0)
    decision = decide(fleet(replica(waiting=5.0)), slow, None, now=0.0)
    assert decision.num_replicas == 2
    assert "at once" in decision.reason


def test_upscale_timer_restarts_after_a_wish_to_scale_down() -> None:
    busy = fleet(replica(waiting=4.0, running=4.0), target=1)  # wants 2
    quiet = fleet(replica(running=1.0), target=2)  # wants 1
    first = decide(busy, SETTINGS, None, now=0.0)
    assert first.pending == PendingScale("up", 0.0)
    turned = decide(quiet, SETTINGS, first.pending, now=5.0)
    assert turned.pending == PendingScale("down", 5.0)
    again = decide(busy, SETTINGS, turned.pending, now=11.0)
    assert again.num_replicas == 1
    assert again.pending == PendingScale("up", 11.0)


def test_upscale_timer_restarts_when_the_wish_disappears() -> None:
    busy = fleet(replica(waiting=4.0, running=4.0))  # wants 2
    settled = fleet(replica(running=4.0))  # wants 1
    pending = decide(busy, SETTINGS, None, now=0.0).pending
    cleared = decide(settled, SETTINGS, pending, now=5.0)
    assert cleared.pending is None
    assert decide(busy, SETTINGS, cleared.pending, now=10.0).num_replicas == 1


def test_missing_metrics_keep_the_pending_move() -> None:
    pending = PendingScale("up", 0.0)
    decision = decide(fleet(replica(waiting=50.0), num_missing=1), SETTINGS, pending, now=5.0)
    assert decision.num_replicas == 2
    assert decision.pending == pending
    assert "not reported" in decision.reason


# (field, bad value, message)
INVALID_SETTINGS = [
    ("min_replicas", -1, "min_replicas must be >= 0, got -1"),
    ("min_replicas", 1.5, "min_replicas must be an integer, got 1.5"),
    ("max_replicas", 0, "max_replicas must be >= 1, got 0"),
    ("max_replicas", True, "max_replicas must be an integer, got True"),
    ("target_queue_per_replica", 0.0, "target_queue_per_replica must be > 0, got 0.0"),
    ("target_queue_per_replica", float("nan"), "target_queue_per_replica must be > 0, got nan"),
    ("kv_usage_target", 0.0, "kv_usage_target must be in (0, 1], got 0.0"),
    ("kv_usage_target", 1.5, "kv_usage_target must be in (0, 1], got 1.5"),
    ("idle_timeout_s", -1.0, "idle_timeout_s must be >= 0, got -1.0"),
    ("upscale_delay_s", -0.5, "upscale_delay_s must be >= 0, got -0.5"),
    ("downscale_delay_s", float("nan"), "downscale_delay_s must be >= 0, got nan"),
]


@pytest.mark.parametrize(("field", "value", "message"), INVALID_SETTINGS)
def test_invalid_settings_name_the_field_and_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        replace(SETTINGS, **{field: value})
    assert str(error.value) == message


def test_max_replicas_below_min_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_replicas must be >= min_replicas \(3\), got 2"):
        ScalingSettings(min_replicas=3, max_replicas=2)


@pytest.mark.parametrize(
    ("signals", "expected_cause", "expected_desired"),
    [
        pytest.param(fleet(replica(waiting=9.0, running=4.0)), "queue", 4, id="a long queue"),
        pytest.param(fleet(replica(running=2.0, kv_usage=0.95)), "kv_usage", 2, id="a full cache, short queue"),
        pytest.param(fleet(replica(idle_s=900.0)), "idle", 0, id="idle past the timeout"),
        pytest.param(fleet(queued=3.0, target=0), "starved", 1, id="requests wait, nothing runs"),
        pytest.param(fleet(replica(), num_missing=1), "missing_metrics", None, id="a replica has not reported"),
        pytest.param(fleet(replica(running=2.0)), "queue", 1, id="steady"),
    ],
)
def test_every_decision_names_its_cause_and_the_replicas_the_load_calls_for(
    signals: ScalingSignals, expected_cause: str, expected_desired: int | None
) -> None:
    decision = decide(signals, SETTINGS, None, now=0.0)
    assert (decision.cause, decision.desired) == (expected_cause, expected_desired)
