"""The admission rule both stores apply, in one place: which limit refuses one more request, and what
the caller is told about it (retry_after_s, LimitState).

The SQLite store calls `find_refusal` inside its transaction; the Redis store runs the same comparisons
in Lua (redis_scripts.ADMIT) and reports the refusal as its index in REFUSALS. Both build the answer
with `admission`. tests/unit/test_tenant_stores.py holds both stores to the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployments.tenants.store import (
    SECONDS_PER_WINDOW,
    Admission,
    LimitState,
    Refusal,
    Reservation,
    TenantLimits,
    period_index,
    window_index,
)

__all__ = ["CONCURRENCY_RETRY_S", "REFUSALS", "TenantCounts", "admission", "check_admitted_now", "find_refusal"]

# The order limits are checked in; the Redis admit script returns 1 + the index of the one that refused.
REFUSALS: tuple[Refusal, ...] = ("max_concurrent_requests", "requests_per_minute", "tokens_per_minute", "budget")

# A concurrency slot frees as soon as any request of the tenant ends: worth retrying soon.
CONCURRENCY_RETRY_S = 1.0


@dataclass(frozen=True)
class TenantCounts:
    """A tenant's figures an admission is checked against (expired reservations not counted)."""

    window_requests: int
    window_tokens: int
    # Live reservations, and the sum of their worst-case costs.
    in_flight: int
    reserved_pico_usd: int
    # Settled spend in the reservation's budget period.
    spent_pico_usd: int


def check_admitted_now(reservation: Reservation, limits: TenantLimits, now: float) -> None:
    """Raise ValueError unless `reservation` names the window and budget period holding `now`: an admission
    counts there, and settling it later adjusts the window and records the spend there."""
    window, period = window_index(now), period_index(now, limits.budget_period_s)
    if (reservation.window, reservation.period) != (window, period):
        raise ValueError(
            f"reservation {reservation.reservation_id} is for window {reservation.window} and period "
            f"{reservation.period}, but now ({now}) is in window {window} and period {period}"
        )


def find_refusal(counts: TenantCounts, reservation: Reservation, limits: TenantLimits) -> Refusal | None:
    """The first limit (in REFUSALS order) that refuses one more request holding `reservation`."""
    if limits.max_concurrent_requests is not None and counts.in_flight >= limits.max_concurrent_requests:
        return "max_concurrent_requests"
    if limits.requests_per_minute is not None and counts.window_requests >= limits.requests_per_minute:
        return "requests_per_minute"
    if limits.tokens_per_minute is not None and counts.window_tokens + reservation.tokens > limits.tokens_per_minute:
        return "tokens_per_minute"
    committed = counts.spent_pico_usd + counts.reserved_pico_usd + reservation.cost_pico_usd
    if limits.budget_pico_usd is not None and committed > limits.budget_pico_usd:
        return "budget"
    return None


def admission(
    refusal: Refusal | None,
    reservation: Reservation,
    limits: TenantLimits,
    now: float,
    window_requests: int,
    window_tokens: int,
) -> Admission:
    """The answer to an admit call; `window_requests` and `window_tokens` count this request when admitted."""
    reset_s = (window_index(now) + 1) * SECONDS_PER_WINDOW - now
    state = LimitState(
        requests_limit=limits.requests_per_minute,
        requests_remaining=_remaining(limits.requests_per_minute, window_requests),
        tokens_limit=limits.tokens_per_minute,
        tokens_remaining=_remaining(limits.tokens_per_minute, window_tokens),
        reset_s=reset_s,
    )
    return Admission(
        admitted=refusal is None,
        refusal=refusal,
        retry_after_s=_retry_after_s(refusal, reservation, limits, reset_s),
        limits=state,
    )


def _remaining(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(limit - used, 0)


def _retry_after_s(
    refusal: Refusal | None, reservation: Reservation, limits: TenantLimits, reset_s: float
) -> float | None:
    if refusal == "max_concurrent_requests":
        return CONCURRENCY_RETRY_S
    if refusal == "requests_per_minute":
        return reset_s
    if refusal == "tokens_per_minute":
        # A request larger than the whole limit is refused in every window.
        assert limits.tokens_per_minute is not None
        return None if reservation.tokens > limits.tokens_per_minute else reset_s
    # Admitted, or a budget spent until its period ends (or until an operator raises it).
    return None
