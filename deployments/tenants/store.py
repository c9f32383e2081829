"""The tenants store's contract: keys, per-minute windows, reservations and spend, updated atomically.

A store holds no tenant settings (those are the serve config's); it holds what changes while the
platform runs and must be shared by every router replica:

    keys          key id -> KeyRecord (the key's hash, never the key)
    windows       (tenant, minute) -> requests admitted, tokens counted
    reservations  reservation id -> Reservation, until its request settles (or it expires)
    spend         (tenant, budget period, model) -> prompt and completion tokens, cost, requests

`admit` checks every limit and records the admission in one atomic update; `settle` replaces a
reservation with what the request really used, once (a second settle of the same id does nothing).
Money is integer pico-USD (1e-12 USD), so sums are exact. A store that cannot be reached raises
`StoreUnavailableError`; the Router answers it with 503 and counts nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, Protocol

from deployments.config import AuthSettings

__all__ = [
    "SECONDS_PER_WINDOW",
    "Admission",
    "KeyRecord",
    "LimitState",
    "ModelUsage",
    "Refusal",
    "Reservation",
    "StoreUnavailableError",
    "TenantLimits",
    "TenantState",
    "TenantStore",
    "Usage",
    "open_store",
    "period_index",
    "window_index",
]

# Rate limits count in fixed windows of one minute (window i covers [60 i, 60 (i + 1)) Unix seconds).
SECONDS_PER_WINDOW = 60

# The limit an admission was refused by.
Refusal = Literal["requests_per_minute", "tokens_per_minute", "max_concurrent_requests", "budget"]


class StoreUnavailableError(Exception):
    """The store could not be reached or did not answer in time; nothing was changed by this call."""


def window_index(now: float) -> int:
    """The rate-limit window holding Unix time `now`."""
    return math.floor(now / SECONDS_PER_WINDOW)


def period_index(now: float, period_s: float) -> int:
    """The budget period holding Unix time `now`: periods of `period_s` seconds from the Unix epoch."""
    return math.floor(now / period_s)


@dataclass(frozen=True)
class KeyRecord:
    """One API key as the store holds it."""

    # Public identifier, part of the key itself; what logs, listings and revocations name.
    key_id: str
    tenant: str
    # Hex SHA-256 of the whole key (keys are random and high-entropy, so a fast hash suffices).
    key_hash: str
    # What the key is for, as its creator described it.
    description: str
    created_at: float
    # Unix time after which the key is refused; None: never.
    expires_at: float | None = None
    # Unix time it was revoked; None: not revoked.
    revoked_at: float | None = None

    def is_valid(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits, from the serve config; None: no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    budget_pico_usd: int | None = None
    # Length of a budget period (spend is also reported per period when there is no budget).
    budget_period_s: float = 30 * 86400.0


@dataclass(frozen=True)
class Reservation:
    """What an admitted request holds until it settles: its worst case."""

    reservation_id: str
    tenant: str
    model: str
    # Worst-case tokens (prompt bound + n * max_tokens), counted in the admission window's tokens.
    tokens: int
    # Worst-case cost, held against the budget.
    cost_pico_usd: int
    # The window it was admitted in (settling adjusts that window's token count, if still current).
    window: int
    # The budget period it was admitted in (its spend is recorded there).
    period: int
    # After this Unix time it no longer holds a concurrency slot or budget (its router died);
    # settling it then records nothing.
    expires_at: float


@dataclass(frozen=True)
class Usage:
    """What a request really used, when it ended (finished, failed or aborted)."""

    prompt_tokens: int
    completion_tokens: int
    cost_pico_usd: int


@dataclass(frozen=True)
class LimitState:
    """A tenant's rate-limit figures as the x-ratelimit-* headers report them (None: no such limit)."""

    requests_limit: int | None
    requests_remaining: int | None
    tokens_limit: int | None
    tokens_remaining: int | None
    # Seconds until the current window ends and both counts start again.
    reset_s: float


@dataclass(frozen=True)
class Admission:
    admitted: bool
    # Why it was refused (None when admitted).
    refusal: Refusal | None
    # Seconds after which the refusal may not hold any more (None: it will hold, e.g. a request
    # larger than the whole tokens-per-minute limit, or a budget spent until the period ends).
    retry_after_s: float | None
    limits: LimitState


@dataclass(frozen=True)
class ModelUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_pico_usd: int = 0


@dataclass(frozen=True)
class TenantState:
    """A tenant's figures now: this window, in flight, and this budget period."""

    window_requests: int
    window_tokens: int
    in_flight: int
    reserved_pico_usd: int
    # Settled usage in the current budget period, per model.
    models: dict[str, ModelUsage] = field(default_factory=dict)

    @property
    def spent_pico_usd(self) -> int:
        return sum(usage.cost_pico_usd for usage in self.models.values())


class TenantStore(Protocol):
    """Every method is atomic on the store; a store that cannot be reached raises StoreUnavailableError."""

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key (its key_id unused so far)."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        """Keys (of one tenant, or all), oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark the key revoked at `now`; False if there is no such key (revoking twice keeps the first time)."""
        ...

    async def admit(self, reservation: Reservation, limits: TenantLimits, now: float) -> Admission:
        """Check the tenant's limits for one more request holding `reservation`, and if every one
        allows it, count it in the window and hold the reservation, all in one atomic update.

        Refused when: live reservations >= max_concurrent_requests; window requests >=
        requests_per_minute; window tokens + reservation.tokens > tokens_per_minute; or settled spend
        in the period + live reservations' cost + reservation.cost_pico_usd > budget. Expired
        reservations (expires_at <= now) are dropped first. The returned LimitState counts this
        request when admitted.
        """
        ...

    async def settle(self, reservation: Reservation, usage: Usage, now: float) -> bool:
        """Replace the reservation by what the request used: add `usage` to the spend of its tenant,
        model and period (one request), adjust its window's tokens by usage tokens - reserved tokens
        when that window is still the current one, and release the reservation. Atomic and
        idempotent: False (and nothing changed) when the reservation is no longer held."""
        ...

    async def tenant_state(self, tenant: str, limits: TenantLimits, now: float) -> TenantState:
        """The tenant's figures now (expired reservations not counted)."""
        ...

    async def close(self) -> None: ...


def open_store(url: str, password: str | None = None) -> TenantStore:
    """The store at `url`: 'sqlite:///<path>' (a file, created when missing) or 'redis://host:port/db'
    (`password`: Redis's, where the URL names none).

    Raises ValueError for any other scheme."""
    if url.startswith("sqlite:///"):
        from deployments.tenants.sqlite_store import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from deployments.tenants.redis_store import RedisStore

        return RedisStore(url, password)
    raise ValueError(f"a store URL is 'sqlite:///<path>' or 'redis://<host>:<port>/<db>', got {url!r}")


def open_auth_store(auth: AuthSettings) -> TenantStore:
    """The store `auth` names, with the password in `auth.store_password_env` where that is set."""
    return open_store(auth.store, os.environ.get(auth.store_password_env) or None)
