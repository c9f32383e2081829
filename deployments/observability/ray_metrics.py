"""`MetricSpec`s as Ray metrics, so that every node's metrics export port serves them (with Ray's
`ray_` prefix) next to Ray Serve's own series: what a Prometheus or KubeRay's PodMonitor scrapes.

Ray metrics work in any Ray worker (a Serve replica, the controller); each process reports its own
series, labelled by Ray with its WorkerId and node.
"""

from __future__ import annotations

from typing import Any

from ray.util import metrics as ray_metrics

from engine.metrics.backend import Instrument, Labels
from engine.metrics.definitions import MetricSpec

__all__ = ["RayMetricsBackend"]

# One Ray metric per name per process: every backend (and every model's recorder) shares them.
_METRICS: dict[str, Any] = {}


class _RayInstrument:
    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def inc(self, amount: float, labels: Labels) -> None:
        self._metric.inc(amount, tags=dict(labels))

    def set(self, value: float, labels: Labels) -> None:
        self._metric.set(value, tags=dict(labels))

    def observe(self, value: float, labels: Labels) -> None:
        self._metric.observe(value, tags=dict(labels))


class RayMetricsBackend:
    def instrument(self, spec: MetricSpec) -> Instrument:
        metric = _METRICS.get(spec.name)
        if metric is None:
            metric = _create(spec)
            _METRICS[spec.name] = metric
        return _RayInstrument(metric)


def _create(spec: MetricSpec) -> Any:
    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
    return ray_metrics.Histogram(spec.name, description=spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)
