"""What the engine reports for its metrics: plain data, so it crosses from an engine process.

    LLMEngine.step() ── StepStats ──▶ on_stats callback ──▶ EngineMetrics.record (a backend's instruments)

One `StepStats` per step, and one for an abort between steps (then no tokens ran and
`step_duration_s` is None), so a recorder sees every change. Tenant "" is the default tenant (a
request that names none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.outputs import FinishReason

__all__ = ["FinishedRequestStats", "StatsCallback", "StepStats", "TokenLatency", "never_raising"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedRequestStats:
    """One request that left the engine. Times are `time.time()` seconds."""

    tenant: str
    finish_reason: FinishReason
    num_prompt_tokens: int
    num_generation_tokens: int
    arrival: float
    # None when it never got that far (aborted while waiting, or before its first token).
    first_scheduled: float | None
    first_token: float | None
    finish: float


@dataclass(frozen=True)
class TokenLatency:
    """Seconds for one request's token(s) in a step: to its first token (`is_first`) since
    arrival, or since its previous token."""

    tenant: str
    seconds: float
    is_first: bool


@dataclass
class StepStats:
    """One step's news and the engine's load after it."""

    # Wall seconds the step took; None for an update that ran no step (an abort between steps).
    step_duration_s: float | None = None
    # Tokens run through the model in this step (prompt chunks and decode tokens).
    num_scheduled_tokens: int = 0
    # Prompt tokens computed in this step (prefix-cache hits excluded, recompute included).
    num_prompt_tokens_computed: int = 0
    # Per tenant: prompt tokens of requests that produced their first token in this step.
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    # Per tenant: tokens generated in this step.
    generation_tokens: dict[str, int] = field(default_factory=dict)
    # Per tenant: sequences preempted in this step.
    preemptions: dict[str, int] = field(default_factory=dict)
    # Prompt tokens looked up in the prefix cache in this step, and found there.
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    # Time to first token, or since the previous token, of every request that got a token.
    token_latencies: list[TokenLatency] = field(default_factory=list)
    finished: list[FinishedRequestStats] = field(default_factory=list)
    # Per tenant: requests ended by an engine failure (their streams got EngineDeadError).
    errored: dict[str, int] = field(default_factory=dict)
    # The load after the step, per tenant (tenants with none are left out).
    num_running: dict[str, int] = field(default_factory=dict)
    num_waiting: dict[str, int] = field(default_factory=dict)
    kv_cache_usage: float = 0.0


StatsCallback = Callable[[StepStats], None]


def never_raising(callback: StatsCallback) -> StatsCallback:
    """`callback`, made harmless: an exception it raises is logged (with its traceback the first
    time) and swallowed, so a metrics failure never fails a step, an abort or a stream."""
    failures = 0

    def report(stats: StepStats) -> None:
        nonlocal failures
        try:
            callback(stats)
        except Exception:  # noqa: BLE001 - metrics are advisory; serving goes on
            failures += 1
            logger.error("recording engine metrics failed (%d times so far)", failures, exc_info=failures == 1)

    return report
