"""The Router's metrics, defined once (the same `MetricSpec` as the engine's): requests, rejections,
held cold starts, and tenants' tokens and spend. Inside Serve they are scraped with Ray's `ray_`
prefix, e.g. `ray_switchyard_router_requests_total`."""

from __future__ import annotations

from engine.metrics.definitions import LATENCY_BUCKETS_S, TTFT_BUCKETS_S, MetricSpec

__all__ = [
    "COLD_STARTS",
    "COLD_START_WAIT",
    "REJECTIONS",
    "REJECTION_REASONS",
    "REQUESTS",
    "REQUEST_DURATION",
    "ROUTER_METRICS",
    "ROUTER_TTFT",
    "TENANT_SPEND",
    "TENANT_TOKENS",
]

# Why the Router refused a request (the `reason` label of REJECTIONS).
REJECTION_REASONS = (
    "bad_request",  # 400 / 413: malformed, over a limit, too long for the model
    "bad_key",  # 401: missing, unknown, expired or revoked API key
    "model_not_found",  # 404: no such model, or not one the tenant may use
    "rate_limited",  # 429: a tenant's requests or tokens per minute, or its concurrency
    "over_budget",  # 429: the tenant's budget is spent
    "queue_full",  # 429: the model's queue is full
    "unavailable",  # 503: no replica in time (cold start or busy), engine stopping, store down
)

REQUESTS = MetricSpec(
    "switchyard_router_requests",
    "counter",
    "Requests answered by the Router, by status_code: the HTTP status, or for a stream that failed "
    "after its 200 the failure's status, and 499 when the client left first.",
    ("model", "endpoint", "status_code", "tenant"),
)
REJECTIONS = MetricSpec(
    "switchyard_router_rejections",
    "counter",
    "Requests refused before or instead of generating, by reason: " + ", ".join(REJECTION_REASONS) + ".",
    ("model", "reason", "tenant"),
)
REQUEST_DURATION = MetricSpec(
    "switchyard_router_request_duration_seconds",
    "histogram",
    "From the Router receiving a request to its last byte (or its failure).",
    ("model", "endpoint"),
    LATENCY_BUCKETS_S,
)
ROUTER_TTFT = MetricSpec(
    "switchyard_router_time_to_first_token_seconds",
    "histogram",
    "From the Router receiving a request to its first generated chunk, as the client sees it "
    "(queueing in the Router and Serve, and a cold start, included).",
    ("model", "endpoint"),
    TTFT_BUCKETS_S,
)
COLD_STARTS = MetricSpec(
    "switchyard_cold_starts",
    "counter",
    "Requests that arrived while their model had no running replica and were held for one.",
    ("model", "outcome"),
)
COLD_START_WAIT = MetricSpec(
    "switchyard_cold_start_wait_seconds",
    "histogram",
    "How long a held request waited for its first token while its model's replica started.",
    ("model",),
    TTFT_BUCKETS_S,
)
TENANT_TOKENS = MetricSpec(
    "switchyard_tenant_tokens",
    "counter",
    "Tokens settled to a tenant, by kind: prompt or completion.",
    ("tenant", "model", "kind"),
)
TENANT_SPEND = MetricSpec(
    "switchyard_tenant_spend_usd",
    "counter",
    "Spend settled to a tenant, in US dollars, at its model's pricing.",
    ("tenant", "model"),
)

ROUTER_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS,
    REJECTIONS,
    REQUEST_DURATION,
    ROUTER_TTFT,
    COLD_STARTS,
    COLD_START_WAIT,
    TENANT_TOKENS,
    TENANT_SPEND,
)
