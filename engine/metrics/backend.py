"""Instruments for `MetricSpec`s: the protocol a recorder writes to, and its prometheus_client form.

A backend turns each spec into one instrument; every backend over the same registry gives the
same instrument for a spec, so several engines in one process share their metrics, told apart by
the `model` label. Inside Serve
the backend is Ray's metrics (deployments.observability.ray_metrics), with the same specs.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.metrics.definitions import MetricSpec

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Instrument", "Labels", "MetricsBackend", "PrometheusBackend"]

Labels = Mapping[str, str]

# Per registry, its instruments by metric name (prometheus_client refuses a name registered twice).
_INSTRUMENTS: weakref.WeakKeyDictionary[Any, dict[str, _PrometheusInstrument]] = weakref.WeakKeyDictionary()


class Instrument(Protocol):
    """One metric; each call names every label of its spec."""

    def inc(self, amount: float, labels: Labels) -> None:
        """Counters: add `amount` (> 0)."""

    def set(self, value: float, labels: Labels) -> None:
        """Gauges: the value now."""

    def observe(self, value: float, labels: Labels) -> None:
        """Histograms: one observation."""


class MetricsBackend(Protocol):
    def instrument(self, spec: MetricSpec) -> Instrument: ...


class _PrometheusInstrument:
    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def inc(self, amount: float, labels: Labels) -> None:
        self._metric.labels(**labels).inc(amount)

    def set(self, value: float, labels: Labels) -> None:
        self._metric.labels(**labels).set(value)

    def observe(self, value: float, labels: Labels) -> None:
        self._metric.labels(**labels).observe(value)


class PrometheusBackend:
    """prometheus_client metrics in `registry` (default: prometheus_client's global registry, which
    `prometheus_client.start_http_server(port)` serves)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        import prometheus_client

        self._client = prometheus_client
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self._instruments = _INSTRUMENTS.setdefault(self.registry, {})

    def instrument(self, spec: MetricSpec) -> Instrument:
        instrument = self._instruments.get(spec.name)
        if instrument is None:
            instrument = _PrometheusInstrument(self._create(spec))
            self._instruments[spec.name] = instrument
        return instrument

    def _create(self, spec: MetricSpec) -> Any:
        client, labels = self._client, list(spec.labels)
        if spec.kind == "counter":
            return client.Counter(spec.name, spec.help, labels, registry=self.registry)
        if spec.kind == "gauge":
            return client.Gauge(spec.name, spec.help, labels, registry=self.registry)
        return client.Histogram(spec.name, spec.help, labels, registry=self.registry, buckets=spec.buckets)
