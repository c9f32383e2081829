"""The engine's metrics: definitions, the stats a step reports, and a recorder over a backend.
Torch-free; prometheus_client is imported only when a `PrometheusBackend` is built."""

from engine.metrics.backend import Instrument, MetricsBackend, PrometheusBackend
from engine.metrics.definitions import ENGINE_METRICS, MetricSpec
from engine.metrics.engine_metrics import ANONYMOUS_TENANT_LABEL, ERROR_REASON, EngineMetrics
from engine.metrics.stats import FinishedRequestStats, StatsCallback, StepStats, TokenLatency, never_raising

__all__ = [
    "ANONYMOUS_TENANT_LABEL",
    "ENGINE_METRICS",
    "ERROR_REASON",
    "EngineMetrics",
    "FinishedRequestStats",
    "Instrument",
    "MetricSpec",
    "MetricsBackend",
    "PrometheusBackend",
    "StatsCallback",
    "StepStats",
    "TokenLatency",
    "never_raising",
]
