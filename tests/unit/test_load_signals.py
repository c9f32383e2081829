"""LoadSignals, the one seam from a replica to the autoscaler and the router: to and from metrics."""

from __future__ import annotations

import math
from typing import Any

import pytest

from autoscaling import METRIC_NAMES, LoadSignals

SIGNALS = LoadSignals(num_waiting=3.0, num_running=5.0, kv_usage=0.42, idle_s=0.0, num_requests=2.0)


def test_metric_names_are_the_field_names_in_order() -> None:
    assert METRIC_NAMES == ("num_waiting", "num_running", "kv_usage", "idle_s", "num_requests")


def test_to_metrics_is_keyed_by_the_metric_names_with_float_values() -> None:
    metrics = LoadSignals(num_waiting=3, num_running=5, kv_usage=0.42, idle_s=0, num_requests=2).to_metrics()
    assert metrics == {"num_waiting": 3.0, "num_running": 5.0, "kv_usage": 0.42, "idle_s": 0.0, "num_requests": 2.0}
    assert tuple(metrics) == METRIC_NAMES
    assert all(type(value) is float for value in metrics.values())


def test_metrics_round_trip() -> None:
    assert LoadSignals.from_metrics(SIGNALS.to_metrics()) == SIGNALS
    idle = LoadSignals(num_waiting=0.0, num_running=0.0, kv_usage=0.0, idle_s=812.5)
    assert LoadSignals.from_metrics(idle.to_metrics()) == idle


def test_from_metrics_takes_ints_and_ignores_other_keys() -> None:
    metrics: dict[str, Any] = {
        "num_waiting": 3,
        "num_running": 5,
        "kv_usage": 0.42,
        "idle_s": 0,
        "num_requests": 2,
        "other": "x",
    }
    signals = LoadSignals.from_metrics(metrics)
    assert signals == SIGNALS
    assert signals is not None and all(type(getattr(signals, name)) is float for name in METRIC_NAMES)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_from_metrics_is_none_when_a_metric_is_missing(name: str) -> None:
    metrics = SIGNALS.to_metrics()
    del metrics[name]
    assert LoadSignals.from_metrics(metrics) is None


@pytest.mark.parametrize("name", METRIC_NAMES)
@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, None, "3", [1.0]], ids=["nan", "inf", "-inf", "None", "str", "list"]
)
def test_from_metrics_is_none_when_a_metric_is_not_a_finite_number(name: str, value: object) -> None:
    assert LoadSignals.from_metrics({**SIGNALS.to_metrics(), name: value}) is None


def test_from_metrics_is_none_for_no_report() -> None:
    assert LoadSignals.from_metrics({}) is None


def test_num_sequences_counts_waiting_and_running() -> None:
    assert SIGNALS.num_sequences == 8.0


def test_sequences_per_request_is_at_least_one() -> None:
    assert SIGNALS.sequences_per_request == 4.0  # two requests of four choices
    assert LoadSignals(0.0, 0.0, 0.0, 5.0, num_requests=0.0).sequences_per_request == 1.0
    # A report taken as requests started, before their sequences reached the engine.
    assert LoadSignals(0.0, 1.0, 0.0, 0.0, num_requests=3.0).sequences_per_request == 1.0
