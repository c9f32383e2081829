"""The shared tenant store: Redis, for several router replicas (on one node or a cluster's many).

Admit and settle are each one Lua script (redis_scripts.py), so replicas never race. Keys are under
`switchyard:`; a tenant's carry its name as a hash tag, so they share one Redis Cluster slot:

    switchyard:{keys}                   hash  key id -> KeyRecord as JSON (never changed after creation)
    switchyard:{keys}:revoked           hash  key id -> first revocation time
    switchyard:{<tenant>}:window:<w>    hash  requests, tokens; expires WINDOW_TTL_S after the last admit
    switchyard:{<tenant>}:reservations  hash  reservation id -> '<expires_at>|<cost_pico_usd>'
    switchyard:{<tenant>}:spend:<p>     hash  <figure>:<model> -> int (figure: a ModelUsage field),
                                              total_cost_pico_usd -> int

The admit script drops a tenant's expired reservations before it counts the live ones. Short socket
timeouts make a dead Redis fail fast with StoreUnavailableError; the client reconnects by itself on
a later call once Redis is back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from deployments.tenants import redis_scripts
from deployments.tenants._store_rules import REFUSALS, admission, check_admitted_now
from deployments.tenants.store import (
    SECONDS_PER_WINDOW,
    Admission,
    KeyRecord,
    ModelUsage,
    Reservation,
    StoreUnavailableError,
    TenantLimits,
    TenantState,
    Usage,
    period_index,
    window_index,
)

__all__ = ["COMMAND_TIMEOUT_S", "CONNECT_TIMEOUT_S", "WINDOW_TTL_S", "RedisStore"]

# A dead or unreachable Redis must fail a request in about a second or two, not hang it.
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0

# A window's counts live for two windows after its last admit: long enough for settles to adjust
# the current one, then they go by themselves.
WINDOW_TTL_S = 2 * SECONDS_PER_WINDOW

# Redis unreachable, timing out, loading its data, read-only after a failover, or out of memory:
# an outage, not a bug (errors of our own scripts are ResponseErrors and raise as they are).
_UNAVAILABLE = (
    redis_errors.ConnectionError,  # also BusyLoadingError (loading its data) and AuthenticationError
    redis_errors.TimeoutError,
    TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.OutOfMemoryError,
)

_KEYS = "switchyard:{keys}"
_REVOKED = "switchyard:{keys}:revoked"


class RedisStore:
    """A TenantStore in the Redis at `url` ('redis://host:port/db', 'rediss://…' or 'unix://…');
    `password` is used where the URL names none."""

    def __init__(self, url: str, password: str | None = None) -> None:
        self._where = _without_password(url)
        self._redis = Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            # One immediate retry on a broken connection: the first call after Redis restarts finds
            # its pooled connection dead and reconnects. Timeouts are not retried (they would double
            # the wait); admit and settle are safe to rerun either way (see redis_scripts).
            retry=Retry(NoBackoff(), retries=1, supported_errors=(redis_errors.ConnectionError,)),
        )
        # EVALSHA, loading the script again when Redis answers NOSCRIPT (e.g. after a restart).
        self._admit = self._redis.register_script(redis_scripts.ADMIT)
        self._settle = self._redis.register_script(redis_scripts.SETTLE)

    async def create_key(self, record: KeyRecord) -> None:
        with self._reachable():
            created = await self._redis.hsetnx(_KEYS, record.key_id, json.dumps(asdict(record)))
        if not created:
            raise ValueError(f"key id {record.key_id!r} is already in use")

    async def get_key(self, key_id: str) -> KeyRecord | None:
        with self._reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(_KEYS, key_id)
                pipe.hget(_REVOKED, key_id)
                encoded, revoked_at = await pipe.execute()
        return None if encoded is None else _key_record(encoded, revoked_at)

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(_KEYS)
                pipe.hgetall(_REVOKED)
                encoded, revoked = await pipe.execute()
        records = [_key_record(value, revoked.get(key_id)) for key_id, value in encoded.items()]
        selected = [record for record in records if tenant is None or record.tenant == tenant]
        return sorted(selected, key=lambda record: (record.created_at, record.key_id))

    async def revoke_key(self, key_id: str, now: float) -> bool:
        with self._reachable():
            # Two commands, yet no race: a key's record is never deleted, so once it exists it stays.
            if not await self._redis.hexists(_KEYS, key_id):
                return False
            await self._redis.hsetnx(_REVOKED, key_id, repr(now))
        return True

    async def admit(self, reservation: Reservation, limits: TenantLimits, now: float) -> Admission:
        check_admitted_now(reservation, limits, now)
        tenant = reservation.tenant
        keys = [
            _window_key(tenant, reservation.window),
            _reservations_key(tenant),
            _spend_key(tenant, reservation.period),
        ]
        args = [
            repr(now),
            reservation.reservation_id,
            f"{reservation.expires_at!r}|{reservation.cost_pico_usd}",
            reservation.tokens,
            reservation.cost_pico_usd,
            _optional(limits.max_concurrent_requests),
            _optional(limits.requests_per_minute),
            _optional(limits.tokens_per_minute),
            _optional(limits.budget_pico_usd),
            WINDOW_TTL_S,
        ]
        with self._reachable():
            refusal_code, requests, tokens = await self._admit(keys=keys, args=args)
        refusal = None if refusal_code == 0 else REFUSALS[refusal_code - 1]
        return admission(refusal, reservation, limits, now, requests, tokens)

    async def settle(self, reservation: Reservation, usage: Usage, now: float) -> bool:
        tenant = reservation.tenant
        keys = [
            _reservations_key(tenant),
            _spend_key(tenant, reservation.period),
            _window_key(tenant, reservation.window),
        ]
        is_current_window = reservation.window == window_index(now)
        token_delta = usage.prompt_tokens + usage.completion_tokens - reservation.tokens
        args = [
            reservation.reservation_id,
            repr(now),
            reservation.model,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cost_pico_usd,
            token_delta if is_current_window else "",
        ]
        with self._reachable():
            return await self._settle(keys=keys, args=args) == 1

    async def tenant_state(self, tenant: str, limits: TenantLimits, now: float) -> TenantState:
        with self._reachable():
            # MULTI/EXEC: the three hashes as of one moment.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(_window_key(tenant, window_index(now)))
                pipe.hgetall(_reservations_key(tenant))
                pipe.hgetall(_spend_key(tenant, period_index(now, limits.budget_period_s)))
                window, held, spend = await pipe.execute()
        live_costs = _live_costs(held, now)
        return TenantState(
            window_requests=int(window.get("requests", 0)),
            window_tokens=int(window.get("tokens", 0)),
            in_flight=len(live_costs),
            reserved_pico_usd=sum(live_costs),
            models=_model_usage(spend),
        )

    async def close(self) -> None:
        await self._redis.aclose()

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"the Redis tenant store at {self._where} is unavailable: {error}") from error


def _window_key(tenant: str, window: int) -> str:
    return f"switchyard:{{{tenant}}}:window:{window}"


def _reservations_key(tenant: str) -> str:
    return f"switchyard:{{{tenant}}}:reservations"


def _spend_key(tenant: str, period: int) -> str:
    return f"switchyard:{{{tenant}}}:spend:{period}"


def _optional(limit: int | None) -> int | str:
    return "" if limit is None else limit


def _live_costs(held: dict[str, str], now: float) -> list[int]:
    """The costs of the reservations in a reservations hash that have not expired by `now`."""
    fields = (value.partition("|") for value in held.values())
    return [int(cost) for expires_at, _, cost in fields if float(expires_at) > now]


def _key_record(encoded: str, revoked_at: str | None) -> KeyRecord:
    record = KeyRecord(**json.loads(encoded))
    # A record created already revoked keeps that (earlier) time.
    if record.revoked_at is None and revoked_at is not None:
        return replace(record, revoked_at=float(revoked_at))
    return record


def _model_usage(spend: dict[str, str]) -> dict[str, ModelUsage]:
    """Per-model usage from a spend hash's '<ModelUsage field>:<model>' fields (the total has no ':')."""
    figures: dict[str, dict[str, int]] = {}
    for name, value in spend.items():
        figure, colon, model = name.partition(":")
        if colon:
            figures.setdefault(model, {})[figure] = int(value)
    return {model: ModelUsage(**figures[model]) for model in sorted(figures)}


def _without_password(url: str) -> str:
    """`url` as error messages may show it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
