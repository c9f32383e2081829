"""Records an engine's `StepStats` into the instruments of `ENGINE_METRICS`.

    engine = LLMEngine(config, on_stats=EngineMetrics(PrometheusBackend(), model="demo").record)
    prometheus_client.start_http_server(9400)   # the engine's metrics, offline

The default tenant ("") is labelled `tenant="anonymous"`.
"""

from __future__ import annotations

from engine.metrics import definitions as m
from engine.metrics.backend import MetricsBackend
from engine.metrics.stats import FinishedRequestStats, StepStats

__all__ = ["ANONYMOUS_TENANT_LABEL", "ERROR_REASON", "EngineMetrics"]

# The `tenant` label of requests that name no tenant (auth off).
ANONYMOUS_TENANT_LABEL = "anonymous"
# The `finished_reason` of requests ended by an engine failure, besides stop / length / abort.
ERROR_REASON = "error"


class EngineMetrics:
    """One model's engine metrics. `record` is the engine's `on_stats` callback; call it from one
    thread at a time (the engine's stepping thread)."""

    def __init__(self, backend: MetricsBackend, model: str) -> None:
        self.model = model
        self._instruments = {spec.name: backend.instrument(spec) for spec in m.ENGINE_METRICS}
        # Tenants whose running / waiting gauges were set, so that a tenant with nothing left reads 0.
        self._tenants_with_load: set[str] = set()

    def record(self, stats: StepStats) -> None:
        model = {"model": self.model}
        if stats.step_duration_s is not None:
            self._observe(m.ITERATION_TOKENS, stats.num_scheduled_tokens, model)
        self._inc(m.PROMPT_TOKENS_COMPUTED, stats.num_prompt_tokens_computed, model)
        self._inc(m.PREFIX_CACHE_QUERIES, stats.prefix_cache_queried_tokens, model)
        self._inc(m.PREFIX_CACHE_HITS, stats.prefix_cache_hit_tokens, model)
        for tenant, count in stats.prompt_tokens.items():
            self._inc(m.PROMPT_TOKENS, count, self._labels(tenant))
        for tenant, count in stats.generation_tokens.items():
            self._inc(m.GENERATION_TOKENS, count, self._labels(tenant))
        for tenant, count in stats.preemptions.items():
            self._inc(m.NUM_PREEMPTIONS, count, self._labels(tenant))
        for latency in stats.token_latencies:
            spec = m.TIME_TO_FIRST_TOKEN if latency.is_first else m.INTER_TOKEN_LATENCY
            self._observe(spec, latency.seconds, self._labels(latency.tenant))
        for finished in stats.finished:
            self._record_finished(finished)
        for tenant, count in stats.errored.items():
            self._inc(m.REQUESTS_FINISHED, count, {**self._labels(tenant), "finished_reason": ERROR_REASON})
        self._record_load(stats)

    def _record_finished(self, request: FinishedRequestStats) -> None:
        labels = self._labels(request.tenant)
        self._inc(m.REQUESTS_FINISHED, 1, {**labels, "finished_reason": request.finish_reason})
        self._observe(m.E2E_LATENCY, request.finish - request.arrival, labels)
        self._observe(m.REQUEST_PROMPT_TOKENS, request.num_prompt_tokens, labels)
        self._observe(m.REQUEST_GENERATION_TOKENS, request.num_generation_tokens, labels)
        if request.first_scheduled is not None:
            self._observe(m.QUEUE_TIME, request.first_scheduled - request.arrival, labels)
            if request.first_token is not None:
                self._observe(m.PREFILL_TIME, request.first_token - request.first_scheduled, labels)
        if request.first_token is not None:
            decode_s = request.finish - request.first_token
            self._observe(m.DECODE_TIME, decode_s, labels)
            if request.num_generation_tokens > 1:
                self._observe(m.TIME_PER_OUTPUT_TOKEN, decode_s / (request.num_generation_tokens - 1), labels)

    def _record_load(self, stats: StepStats) -> None:
        tenants = self._tenants_with_load | stats.num_running.keys() | stats.num_waiting.keys()
        for tenant in tenants:
            labels = self._labels(tenant)
            self._instruments[m.NUM_REQUESTS_RUNNING.name].set(stats.num_running.get(tenant, 0), labels)
            self._instruments[m.NUM_REQUESTS_WAITING.name].set(stats.num_waiting.get(tenant, 0), labels)
        self._tenants_with_load = set(stats.num_running) | set(stats.num_waiting)
        self._instruments[m.KV_CACHE_USAGE.name].set(stats.kv_cache_usage, {"model": self.model})

    def _labels(self, tenant: str) -> dict[str, str]:
        return {"model": self.model, "tenant": tenant or ANONYMOUS_TENANT_LABEL}

    def _inc(self, spec: m.MetricSpec, amount: float, labels: dict[str, str]) -> None:
        if amount > 0:  # Ray's counters refuse 0
            self._instruments[spec.name].inc(amount, labels)

    def _observe(self, spec: m.MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._instruments[spec.name].observe(value, labels)
