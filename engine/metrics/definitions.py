"""Every engine metric, defined once: name, kind, help, labels and (for histograms) buckets.

The meanings and bucket choices are vLLM's (`vllm:time_to_first_token_seconds` is
`switchyard_time_to_first_token_seconds` here), so its dashboards' queries carry over. A backend
(`engine.metrics.backend`) turns a spec into an instrument: prometheus_client when the engine runs
alone, Ray's metrics inside Serve. Ray's exporter prefixes application metrics with `ray_`, and both
exporters append `_total` to a counter's name: the counter `switchyard_prompt_tokens` is scraped as
`switchyard_prompt_tokens_total` from prometheus_client and `ray_switchyard_prompt_tokens_total`
from a Ray node's metrics export port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ENGINE_METRICS",
    "LATENCY_BUCKETS_S",
    "LENGTH_BUCKETS",
    "MetricKind",
    "MetricSpec",
    "TOKEN_LATENCY_BUCKETS_S",
    "TTFT_BUCKETS_S",
]

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric. `name` has no `_total` (the exporters add it to counters)."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...]
    # Upper bounds of a histogram's buckets, increasing (+Inf is implicit); empty otherwise.
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.name}: buckets are for histograms only, and a histogram needs them")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: buckets must increase, got {self.buckets}")
        if self.name.endswith("_total"):
            raise ValueError(f"{self.name}: the exporters add _total to counters; leave it off")


def _one_two_five(limit: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `limit` (vLLM's buckets for token counts)."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# Inter-token latency and time per output token.
TOKEN_LATENCY_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# Whole-request phases: end to end, queued, prefill, decode.
LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# Prompt and generation lengths: fixed (not per model's context) so that every replica of every
# model exports one bucket layout under one name.
LENGTH_BUCKETS = _one_two_five(1_000_000)
STEP_TOKEN_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)

_MODEL = ("model",)
_MODEL_TENANT = ("model", "tenant")


def _histogram(
    name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = _MODEL_TENANT
) -> MetricSpec:
    return MetricSpec(name, "histogram", help_text, labels, buckets)


NUM_REQUESTS_RUNNING = MetricSpec(
    "switchyard_num_requests_running", "gauge", "Requests in the engine's running batch.", _MODEL_TENANT
)
NUM_REQUESTS_WAITING = MetricSpec(
    "switchyard_num_requests_waiting", "gauge", "Requests queued in the engine, not yet running.", _MODEL_TENANT
)
KV_CACHE_USAGE = MetricSpec(
    "switchyard_kv_cache_usage_perc", "gauge", "Share of the KV cache's blocks in use (1 = full).", _MODEL
)
PREFIX_CACHE_QUERIES = MetricSpec(
    "switchyard_prefix_cache_queries", "counter", "Prompt tokens looked up in the prefix cache.", _MODEL
)
PREFIX_CACHE_HITS = MetricSpec(
    "switchyard_prefix_cache_hits", "counter", "Prompt tokens found in the prefix cache.", _MODEL
)
NUM_PREEMPTIONS = MetricSpec(
    "switchyard_num_preemptions",
    "counter",
    "Running requests evicted from the KV cache (they resume by recompute), by the evicted request's tenant.",
    _MODEL_TENANT,
)
PROMPT_TOKENS = MetricSpec(
    "switchyard_prompt_tokens", "counter", "Prompt tokens of requests that produced their first token.", _MODEL_TENANT
)
PROMPT_TOKENS_COMPUTED = MetricSpec(
    "switchyard_prompt_tokens_computed",
    "counter",
    "Prompt tokens run through the model (prefill, and recompute after preemption; prefix hits are not).",
    _MODEL,
)
GENERATION_TOKENS = MetricSpec("switchyard_generation_tokens", "counter", "Tokens generated.", _MODEL_TENANT)
REQUESTS_FINISHED = MetricSpec(
    "switchyard_requests_finished",
    "counter",
    "Requests that left the engine, by finished_reason: stop, length, abort (the client left or the "
    "request was cancelled) or error (the engine failed).",
    (*_MODEL_TENANT, "finished_reason"),
)
TIME_TO_FIRST_TOKEN = _histogram(
    "switchyard_time_to_first_token_seconds", "From arrival to the first generated token.", TTFT_BUCKETS_S
)
INTER_TOKEN_LATENCY = _histogram(
    "switchyard_inter_token_latency_seconds",
    "Between consecutive generated tokens of a request.",
    TOKEN_LATENCY_BUCKETS_S,
)
TIME_PER_OUTPUT_TOKEN = _histogram(
    "switchyard_request_time_per_output_token_seconds",
    "Per finished request with two or more tokens: decode time / (generated tokens - 1).",
    TOKEN_LATENCY_BUCKETS_S,
)
E2E_LATENCY = _histogram(
    "switchyard_e2e_request_latency_seconds", "Per finished request: arrival to finish.", LATENCY_BUCKETS_S
)
QUEUE_TIME = _histogram(
    "switchyard_request_queue_time_seconds",
    "Per finished request: arrival to first scheduled (waiting in the engine's queue).",
    LATENCY_BUCKETS_S,
)
PREFILL_TIME = _histogram(
    "switchyard_request_prefill_time_seconds",
    "Per finished request: first scheduled to first token.",
    LATENCY_BUCKETS_S,
)
DECODE_TIME = _histogram(
    "switchyard_request_decode_time_seconds", "Per finished request: first token to finish.", LATENCY_BUCKETS_S
)
REQUEST_PROMPT_TOKENS = _histogram(
    "switchyard_request_prompt_tokens", "Per finished request: prompt length in tokens.", LENGTH_BUCKETS
)
REQUEST_GENERATION_TOKENS = _histogram(
    "switchyard_request_generation_tokens", "Per finished request: tokens generated.", LENGTH_BUCKETS
)
ITERATION_TOKENS = _histogram(
    "switchyard_iteration_tokens", "Per engine step: tokens run through the model.", STEP_TOKEN_BUCKETS, _MODEL
)

ENGINE_METRICS: tuple[MetricSpec, ...] = (
    NUM_REQUESTS_RUNNING,
    NUM_REQUESTS_WAITING,
    KV_CACHE_USAGE,
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    NUM_PREEMPTIONS,
    PROMPT_TOKENS,
    PROMPT_TOKENS_COMPUTED,
    GENERATION_TOKENS,
    REQUESTS_FINISHED,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    TIME_PER_OUTPUT_TOKEN,
    E2E_LATENCY,
    QUEUE_TIME,
    PREFILL_TIME,
    DECODE_TIME,
    REQUEST_PROMPT_TOKENS,
    REQUEST_GENERATION_TOKENS,
    ITERATION_TOKENS,
)
