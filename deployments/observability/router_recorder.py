"""Records the Router's metrics (`router_metrics.ROUTER_METRICS`) into a backend: Ray's inside Serve,
prometheus_client in tests."""

from __future__ import annotations

from deployments.observability import router_metrics as m
from deployments.tenants.store import Usage
from engine.metrics import ANONYMOUS_TENANT_LABEL, MetricsBackend

__all__ = ["RouterMetrics"]


class RouterMetrics:
    def __init__(self, backend: MetricsBackend) -> None:
        self._instruments = {spec.name: backend.instrument(spec) for spec in m.ROUTER_METRICS}

    def request_finished(
        self,
        *,
        model: str,
        endpoint: str,
        status_code: int,
        tenant: str | None,
        rejection_reason: str | None,
        duration_s: float,
        ttft_s: float | None,
    ) -> None:
        """One request's end; `model` is its label (a deployed model's name, or what RequestRecord
        puts for others)."""
        tenant_label = tenant or ANONYMOUS_TENANT_LABEL
        labels = {"model": model, "endpoint": endpoint}
        self._instruments[m.REQUESTS.name].inc(1, {**labels, "status_code": str(status_code), "tenant": tenant_label})
        if rejection_reason is not None:
            self._instruments[m.REJECTIONS.name].inc(
                1, {"model": model, "reason": rejection_reason, "tenant": tenant_label}
            )
        self._instruments[m.REQUEST_DURATION.name].observe(duration_s, labels)
        if ttft_s is not None:
            self._instruments[m.ROUTER_TTFT.name].observe(ttft_s, labels)

    def cold_start(self, model: str, served: bool, wait_s: float) -> None:
        """A request held while `model` had no running replica: answered (`served`) or not."""
        self._instruments[m.COLD_STARTS.name].inc(1, {"model": model, "outcome": "served" if served else "failed"})
        if served:
            self._instruments[m.COLD_START_WAIT.name].observe(wait_s, {"model": model})

    def tenant_settled(self, tenant: str, model: str, usage: Usage) -> None:
        """What a request of `tenant` used, as settled (the gate's `on_settle`)."""
        for kind, count in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)):
            if count > 0:
                self._instruments[m.TENANT_TOKENS.name].inc(count, {"tenant": tenant, "model": model, "kind": kind})
        if usage.cost_pico_usd > 0:
            spend_usd = usage.cost_pico_usd / 1e12
            self._instruments[m.TENANT_SPEND.name].inc(spend_usd, {"tenant": tenant, "model": model})
