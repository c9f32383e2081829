"""The Router's tenant checks, before any engine work, and the settling of spend after it.

    authenticate(Authorization)  -> Caller            401 invalid_api_key
    check_model(caller, model)                          404 model_not_found, as for no such model
    admit(caller, model, request) -> Ticket           429 rate_limit_exceeded / insufficient_quota,
                                                        503 when the store is unreachable
    settle(ticket, prompt, completion tokens)          once, before the response's last byte

A looked-up key is reused for `auth.key_cache_ttl_s`, so a revocation reaches every router
replica within that bound. Keys are logged by their id only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.config import AppConfig, AuthSettings, ModelPricing, TenantConfig
from deployments.errors import (
    ApiError,
    AuthenticationError,
    ModelNotFoundError,
    QuotaExceededError,
    RateLimitError,
    TokenRateLimitError,
)
from deployments.generation import GenerationRequest
from deployments.tenants.accounting import cost_pico_usd, rate_limit_headers, worst_case
from deployments.tenants.keys import key_id_of, matches
from deployments.tenants.store import (
    SECONDS_PER_WINDOW,
    Admission,
    KeyRecord,
    LimitState,
    Reservation,
    StoreUnavailableError,
    TenantLimits,
    TenantStore,
    Usage,
    period_index,
    window_index,
)

__all__ = ["Caller", "ModelTerms", "TenantAccess", "TenantGate", "Ticket", "tenant_limits"]

logger = logging.getLogger("ray.serve")

# How often a settle that found the store unreachable is tried again (its reservation keeps
# holding the worst case meanwhile, so no budget can be overshot).
SETTLE_RETRY_S = 1.0


@dataclass(frozen=True)
class ModelTerms:
    """What the gate needs of a model: its prices and the bound of a request's tokens."""

    pricing: ModelPricing | None
    max_model_len: int | None


@dataclass(frozen=True)
class TenantAccess:
    """The serve config's auth settings, tenants and model terms: what a Router replica is built with."""

    auth: AuthSettings
    tenants: list[TenantConfig]
    models: dict[str, ModelTerms]

    @classmethod
    def from_config(cls, config: AppConfig) -> TenantAccess | None:
        """None when auth is off."""
        if not config.auth.enabled:
            return None
        terms = {model.name: ModelTerms(model.pricing, model.engine.max_model_len) for model in config.models}
        return cls(config.auth, list(config.tenants), terms)


@dataclass(frozen=True)
class Caller:
    tenant: TenantConfig
    key_id: str


@dataclass
class Ticket:
    """An admitted request: its reservation, until settled."""

    caller: Caller
    reservation: Reservation
    limits: LimitState
    settled: bool = False

    def headers(self) -> dict[str, str]:
        return rate_limit_headers(self.limits)


def tenant_limits(tenant: TenantConfig) -> TenantLimits:
    return TenantLimits(
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
        max_concurrent_requests=tenant.max_concurrent_requests,
        budget_pico_usd=tenant.budget.amount_pico_usd if tenant.budget is not None else None,
        budget_period_s=tenant.budget_period_s,
    )


@dataclass
class _CachedKey:
    record: KeyRecord
    fetched_at: float


@dataclass
class TenantGate:
    access: TenantAccess
    store: TenantStore
    clock: Callable[[], float] = time.time
    # Told (tenant, model, usage) of every settle once the store recorded it (the Router's metrics);
    # an exception it raises is logged, never the request's.
    on_settle: Callable[[str, str, Usage], None] | None = None
    _keys: dict[str, _CachedKey] = field(default_factory=dict)
    # Settles waiting for the store to come back (held so they are not garbage-collected).
    _retrying: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._tenants = {tenant.name: tenant for tenant in self.access.tenants}

    # ----- who -----------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        key = _bearer(authorization)
        key_id = key_id_of(key)
        record = await self._record(key_id) if key_id is not None else None
        if record is None or not matches(key, record.key_hash):
            raise AuthenticationError(
                "Incorrect API key provided. Keys look like sy-<key id>-<secret>; ask your platform admin for one."
            )
        now = self.clock()
        if record.revoked_at is not None:
            raise AuthenticationError(f"The API key {record.key_id} has been revoked.")
        if record.expires_at is not None and now >= record.expires_at:
            raise AuthenticationError(f"The API key {record.key_id} has expired.")
        tenant = self._tenants.get(record.tenant)
        if tenant is None:
            raise AuthenticationError(f"The API key {record.key_id} belongs to no tenant of this platform.")
        return Caller(tenant, record.key_id)

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and now - cached.fetched_at < self.access.auth.key_cache_ttl_s:
            return cached.record
        record = await self.store.get_key(key_id)
        if record is None:
            self._keys.pop(key_id, None)
        else:
            self._keys[key_id] = _CachedKey(record, now)
        return record

    # ----- what ----------------------------------------------------------------------------

    def models_for(self, caller: Caller) -> list[str]:
        return caller.tenant.allowed_models(list(self.access.models))

    def check_model(self, caller: Caller, model: str) -> None:
        """404 for a model the tenant may not use, worded as for one that does not exist."""
        allowed = self.models_for(caller)
        if model not in allowed:
            raise ModelNotFoundError.for_model(model, allowed)

    # ----- how much ------------------------------------------------------------------------

    async def admit(self, caller: Caller, model: str, requests: list[GenerationRequest], request_id: str) -> Ticket:
        """Admit one HTTP request `request_id`: its GenerationRequests (one per prompt of a batch)
        reserve the sum of their worst cases, as one request of the tenant."""
        terms = self.access.models[model]
        worsts = [worst_case(request, terms.max_model_len, terms.pricing) for request in requests]
        limits = tenant_limits(caller.tenant)
        now = self.clock()
        reservation = Reservation(
            reservation_id=request_id,
            tenant=caller.tenant.name,
            model=model,
            tokens=sum(worst.tokens for worst in worsts),
            cost_pico_usd=sum(
                cost_pico_usd(worst.prompt_tokens, worst.completion_tokens, terms.pricing) for worst in worsts
            ),
            window=window_index(now),
            period=period_index(now, limits.budget_period_s),
            expires_at=now + self.access.auth.reservation_ttl_s,
        )
        admitting = asyncio.ensure_future(self.store.admit(reservation, limits, now))
        try:
            admission = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            # The client left while the store admitted it: release what was reserved, once done.
            admitting.add_done_callback(lambda done: self._release_if_admitted(done, reservation))
            raise
        if not admission.admitted:
            logger.info("tenant %s (key %s): refused by %s", caller.tenant.name, caller.key_id, admission.refusal)
            error = _refusal_error(caller.tenant, admission, reservation)
            error.extra_headers = rate_limit_headers(admission.limits) | error.extra_headers
            raise error
        return Ticket(caller, reservation, admission.limits)

    def _release_if_admitted(self, admitting: asyncio.Future[Admission], reservation: Reservation) -> None:
        if admitting.cancelled() or admitting.exception() is not None or not admitting.result().admitted:
            return
        ticket = Ticket(Caller(self._tenants[reservation.tenant], ""), reservation, admitting.result().limits)
        task = asyncio.get_running_loop().create_task(self.settle(ticket, 0, 0))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    def forget_key(self, key_id: str) -> None:
        """Drop a cached key (revoked here: this replica refuses it at once)."""
        self._keys.pop(key_id, None)

    async def settle(self, ticket: Ticket, prompt_tokens: int, completion_tokens: int) -> None:
        """Record what the request used (once). If the store is unreachable, keep trying in the
        background; meanwhile the reservation holds the worst case, so nothing is overspent."""
        if ticket.settled:
            return
        ticket.settled = True
        terms = self.access.models[ticket.reservation.model]
        usage = Usage(prompt_tokens, completion_tokens, cost_pico_usd(prompt_tokens, completion_tokens, terms.pricing))
        try:
            await self.store.settle(ticket.reservation, usage, self.clock())
            self._tell_settled(ticket.reservation, usage)
        except StoreUnavailableError as error:
            logger.warning("settling %s later: %s", ticket.reservation.reservation_id, error)
            task = asyncio.get_running_loop().create_task(self._settle_later(ticket.reservation, usage))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

    async def _settle_later(self, reservation: Reservation, usage: Usage) -> None:
        while self.clock() < reservation.expires_at:
            await asyncio.sleep(SETTLE_RETRY_S)
            try:
                await self.store.settle(reservation, usage, self.clock())
            except StoreUnavailableError:
                continue
            self._tell_settled(reservation, usage)
            return
        logger.error("could not settle %s before its reservation expired", reservation.reservation_id)

    def _tell_settled(self, reservation: Reservation, usage: Usage) -> None:
        if self.on_settle is None:
            return
        try:
            self.on_settle(reservation.tenant, reservation.model, usage)
        except Exception:  # noqa: BLE001 - metrics are advisory: the settle is done
            logger.exception("recording the settle of %s failed", reservation.reservation_id)

    async def usage(self, tenant: TenantConfig) -> dict[str, Any]:
        """The tenant's usage in the current period and what remains of each limit (GET /v1/usage)."""
        limits = tenant_limits(tenant)
        now = self.clock()
        state = await self.store.tenant_state(tenant.name, limits, now)
        period = period_index(now, limits.budget_period_s)
        reset_s = (window_index(now) + 1) * SECONDS_PER_WINDOW - now
        models = [
            {
                "model": name,
                "requests": usage.requests,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "spend_usd": usage.cost_pico_usd / 1e12,
                "spend_pico_usd": usage.cost_pico_usd,
            }
            for name, usage in sorted(state.models.items())
        ]
        return {
            "object": "usage",
            "tenant": tenant.name,
            "period": {"start": period * limits.budget_period_s, "end": (period + 1) * limits.budget_period_s},
            "models": models,
            "limits": {
                "requests_per_minute": _window_limit(limits.requests_per_minute, state.window_requests, reset_s),
                "tokens_per_minute": _window_limit(limits.tokens_per_minute, state.window_tokens, reset_s),
                "max_concurrent_requests": None
                if limits.max_concurrent_requests is None
                else {"limit": limits.max_concurrent_requests, "in_flight": state.in_flight},
                "budget": None
                if limits.budget_pico_usd is None
                else {
                    "limit_usd": limits.budget_pico_usd / 1e12,
                    "spent_usd": state.spent_pico_usd / 1e12,
                    "reserved_usd": state.reserved_pico_usd / 1e12,
                    "remaining_usd": max(0, limits.budget_pico_usd - state.spent_pico_usd - state.reserved_pico_usd)
                    / 1e12,
                },
            },
        }

    def tenant(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)

    async def close(self) -> None:
        await self.store.close()


def _bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
            "(Authorization: Bearer <key>)."
        )
    return key.strip()


def _window_limit(limit: int | None, used: int, reset_s: float) -> dict[str, Any] | None:
    if limit is None:
        return None
    return {"limit": limit, "remaining": max(0, limit - used), "reset_s": round(reset_s, 3)}


def _refusal_error(tenant: TenantConfig, admission: Admission, reservation: Reservation) -> ApiError:
    retry_after = None if admission.retry_after_s is None else max(1, round(admission.retry_after_s))
    name = tenant.name
    if admission.refusal == "budget":
        return QuotaExceededError(
            f"Tenant {name!r} has spent its budget for this period (this request could cost up to "
            f"{reservation.cost_pico_usd / 1e12:.6f} USD); see GET /v1/usage."
        )
    if admission.refusal == "tokens_per_minute":
        if retry_after is None:
            return TokenRateLimitError(
                f"This request may use up to {reservation.tokens} tokens, more than tenant {name!r}'s limit of "
                f"{tenant.tokens_per_minute} tokens per minute; lower max_tokens or the prompt.",
                extra_headers={"x-should-retry": "false"},  # it can never pass as it is
            )
        return TokenRateLimitError(
            f"Rate limit reached for tenant {name!r}: {tenant.tokens_per_minute} tokens per minute "
            f"(this request may use up to {reservation.tokens}). Retry after {retry_after}s.",
            retry_after_s=retry_after,
        )
    if admission.refusal == "max_concurrent_requests":
        return RateLimitError(
            f"Tenant {name!r} already has {tenant.max_concurrent_requests} requests in flight, its limit; retry "
            "when one ends.",
            retry_after_s=retry_after or 1,
        )
    return RateLimitError(
        f"Rate limit reached for tenant {name!r}: {tenant.requests_per_minute} requests per minute. Retry after "
        f"{retry_after}s.",
        retry_after_s=retry_after,
    )
