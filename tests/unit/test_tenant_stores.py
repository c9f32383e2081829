"""Both tenant stores against one set of cases (SQLite in a temporary folder, a real redis-server per
test): keys, each refusal, windows, reservations, settling once, exact money, concurrent callers.
Every call is given `now`: no test sleeps. What only one kind of store does (its file, its TTLs, an
outage) is in test_tenant_store_backends.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from deployments.tenants._store_rules import CONCURRENCY_RETRY_S
from deployments.tenants.keys import new_key
from deployments.tenants.redis_store import RedisStore
from deployments.tenants.sqlite_store import SqliteStore
from deployments.tenants.store import (
    SECONDS_PER_WINDOW,
    KeyRecord,
    LimitState,
    ModelUsage,
    Reservation,
    TenantLimits,
    TenantStore,
    Usage,
    period_index,
    window_index,
)
from tests.services import RedisServer

T = TypeVar("T")

# 15 s into a window: a refusal by a per-minute limit may be retried after 45 s.
WINDOW = window_index(1.7e9)
NOW = WINDOW * SECONDS_PER_WINDOW + 15.0
RESET_S = 45.0
NEXT_WINDOW = NOW + SECONDS_PER_WINDOW


@dataclass
class Backend:
    """One store kind under test: how to open a store on the test's data, and that data's raw bytes."""

    kind: str
    open: Callable[[], TenantStore]
    bytes_at_rest: Callable[[], bytes]


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        folder = tmp_path / "state"
        return Backend("sqlite", lambda: SqliteStore(str(folder / "tenants.db")), lambda: _files_bytes(folder))
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", lambda: RedisStore(server.url), lambda: _redis_bytes(server))


def _files_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def _redis_bytes(server: RedisServer) -> bytes:
    """Every key and hash field and value in the server, and its append-only files."""
    client = redis.Redis.from_url(server.url)
    live = b"".join(key + b"".join(b"".join(pair) for pair in client.hgetall(key).items()) for key in client.keys())
    client.close()
    return live + _files_bytes(server.directory)


def run(backend: Backend, scenario: Callable[[TenantStore], Awaitable[T]]) -> T:
    async def go() -> T:
        store = backend.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(go())


def reserve(
    reservation_id: str, *, tokens: int = 10, cost: int = 0, now: float = NOW, ttl_s: float = 300.0, model: str = "m"
) -> Reservation:
    period = period_index(now, TenantLimits().budget_period_s)
    return Reservation(reservation_id, "acme", model, tokens, cost, window_index(now), period, now + ttl_s)


def key(key_id: str, tenant: str, created_at: float, expires_at: float | None = None) -> KeyRecord:
    return KeyRecord(key_id, tenant, f"hash-{key_id}", f"key {key_id}", created_at, expires_at)


def test_keys_round_trip_and_list_oldest_first_optionally_by_tenant(backend: Backend) -> None:
    first, second, third = key("k1", "b", NOW + 1), key("k2", "a", NOW + 2), key("k3", "a", NOW + 3, NOW + 100)

    async def scenario(store: TenantStore) -> None:
        for record in (second, first, third):
            await store.create_key(record)
        assert await store.get_key("k3") == third
        assert await store.get_key("missing") is None
        assert await store.list_keys() == [first, second, third]
        assert await store.list_keys("a") == [second, third]
        with pytest.raises(ValueError, match="k1"):
            await store.create_key(key("k1", "c", NOW))
        stored = await store.get_key("k3")
        assert stored is not None and stored.is_valid(NOW + 99) and not stored.is_valid(NOW + 100)

    run(backend, scenario)


def test_revoking_keeps_the_first_revocation_time_and_invalidates_the_key(backend: Backend) -> None:
    async def scenario(store: TenantStore) -> None:
        await store.create_key(key("k1", "a", NOW))
        assert await store.revoke_key("k1", NOW + 10)
        assert await store.revoke_key("k1", NOW + 20)
        assert not await store.revoke_key("missing", NOW)
        stored = await store.get_key("k1")
        assert stored is not None and stored.revoked_at == NOW + 10 and not stored.is_valid(NOW + 11)
        assert [record.revoked_at for record in await store.list_keys("a")] == [NOW + 10]

    run(backend, scenario)


def test_only_a_keys_hash_is_at_rest(backend: Backend) -> None:
    new = new_key()
    secret = new.key.rpartition("-")[2]
    run(backend, lambda store: store.create_key(KeyRecord(new.key_id, "a", new.key_hash, "ci", NOW)))
    stored = backend.bytes_at_rest()
    assert new.key_hash.encode() in stored
    assert new.key.encode() not in stored and secret.encode() not in stored


def test_admit_counts_the_request_and_reports_what_remains(backend: Backend) -> None:
    limits = TenantLimits(requests_per_minute=10, tokens_per_minute=1000)

    async def scenario(store: TenantStore) -> None:
        admission = await store.admit(reserve("r1", tokens=100, cost=7), limits, NOW)
        assert admission.admitted and admission.refusal is None and admission.retry_after_s is None
        assert admission.limits == LimitState(10, 9, 1000, 900, RESET_S)
        state = await store.tenant_state("acme", limits, NOW)
        assert (state.window_requests, state.window_tokens, state.in_flight, state.reserved_pico_usd) == (1, 100, 1, 7)

    run(backend, scenario)


def test_requests_per_minute_refuses_until_the_window_ends_and_counts_nothing(backend: Backend) -> None:
    limits = TenantLimits(requests_per_minute=2)

    async def scenario(store: TenantStore) -> None:
        assert (await store.admit(reserve("r1"), limits, NOW)).admitted
        assert (await store.admit(reserve("r2"), limits, NOW)).admitted
        refused = await store.admit(reserve("r3"), limits, NOW)
        assert (refused.admitted, refused.refusal, refused.retry_after_s) == (False, "requests_per_minute", RESET_S)
        assert refused.limits == LimitState(2, 0, None, None, RESET_S)
        state = await store.tenant_state("acme", limits, NOW)
        assert (state.window_requests, state.in_flight) == (2, 2)

    run(backend, scenario)


def test_tokens_per_minute_refuses_until_the_window_ends_unless_the_request_alone_is_larger(backend: Backend) -> None:
    limits = TenantLimits(tokens_per_minute=100)

    async def scenario(store: TenantStore) -> None:
        assert (await store.admit(reserve("r1", tokens=60), limits, NOW)).admitted
        refused = await store.admit(reserve("r2", tokens=50), limits, NOW)
        assert (refused.refusal, refused.retry_after_s, refused.limits.tokens_remaining) == (
            "tokens_per_minute",
            RESET_S,
            40,
        )
        too_large = await store.admit(reserve("r3", tokens=101), limits, NOW)
        assert (too_large.refusal, too_large.retry_after_s) == ("tokens_per_minute", None)
        assert (await store.admit(reserve("r4", tokens=40), limits, NOW)).admitted

    run(backend, scenario)


def test_concurrency_refuses_with_a_short_retry_until_a_request_settles(backend: Backend) -> None:
    limits = TenantLimits(max_concurrent_requests=1)

    async def scenario(store: TenantStore) -> None:
        held = reserve("r1")
        assert (await store.admit(held, limits, NOW)).admitted
        refused = await store.admit(reserve("r2"), limits, NOW)
        assert (refused.refusal, refused.retry_after_s) == ("max_concurrent_requests", CONCURRENCY_RETRY_S)
        assert await store.settle(held, Usage(1, 1, 0), NOW)
        assert (await store.admit(reserve("r2"), limits, NOW)).admitted

    run(backend, scenario)


def test_budget_counts_settled_spend_and_live_reservations(backend: Backend) -> None:
    limits = TenantLimits(budget_pico_usd=1000)

    async def scenario(store: TenantStore) -> None:
        first = reserve("r1", cost=600)
        assert (await store.admit(first, limits, NOW)).admitted
        refused = await store.admit(reserve("r2", cost=500), limits, NOW)
        assert (refused.refusal, refused.retry_after_s) == ("budget", None)
        assert (await store.admit(reserve("r3", cost=400), limits, NOW)).admitted  # exactly the budget
        assert await store.settle(first, Usage(10, 10, 100), NOW)
        assert (await store.admit(reserve("r4", cost=500), limits, NOW)).admitted  # 100 spent + 400 + 500
        assert (await store.admit(reserve("r5", cost=1), limits, NOW)).refusal == "budget"

    run(backend, scenario)


def test_a_new_window_starts_the_counts_again(backend: Backend) -> None:
    limits = TenantLimits(requests_per_minute=1, tokens_per_minute=100)

    async def scenario(store: TenantStore) -> None:
        assert (await store.admit(reserve("r1", tokens=100), limits, NOW)).admitted
        assert not (await store.admit(reserve("r2", now=NOW + 1), limits, NOW + 1)).admitted
        admission = await store.admit(reserve("r3", tokens=100, now=NEXT_WINDOW), limits, NEXT_WINDOW)
        assert admission.admitted and admission.limits == LimitState(1, 0, 100, 0, RESET_S)
        state = await store.tenant_state("acme", limits, NEXT_WINDOW)
        assert (state.window_requests, state.window_tokens, state.in_flight) == (1, 100, 2)

    run(backend, scenario)


def test_an_expired_reservation_frees_its_slot_and_settles_as_nothing(backend: Backend) -> None:
    limits = TenantLimits(max_concurrent_requests=1)

    async def scenario(store: TenantStore) -> None:
        lost = reserve("r1", cost=5, ttl_s=30)
        assert (await store.admit(lost, limits, NOW)).admitted
        assert not (await store.admit(reserve("r2", now=NOW + 29), limits, NOW + 29)).admitted
        assert (await store.admit(reserve("r3", now=NOW + 30), limits, NOW + 30)).admitted
        assert not await store.settle(lost, Usage(1, 1, 5), NOW + 31)
        state = await store.tenant_state("acme", limits, NOW + 31)
        assert (state.in_flight, state.reserved_pico_usd, state.models) == (1, 0, {})

    run(backend, scenario)


def test_settling_counts_once_and_replaces_the_reserved_tokens_in_the_current_window(backend: Backend) -> None:
    limits = TenantLimits(tokens_per_minute=1000)

    async def scenario(store: TenantStore) -> None:
        reservation = reserve("r1", tokens=500, cost=900)
        await store.admit(reservation, limits, NOW)
        assert await store.settle(reservation, Usage(100, 50, 300), NOW + 1)
        assert not await store.settle(reservation, Usage(100, 50, 300), NOW + 2)
        state = await store.tenant_state("acme", limits, NOW + 2)
        assert (state.window_tokens, state.in_flight, state.reserved_pico_usd) == (150, 0, 0)
        assert state.models == {"m": ModelUsage(requests=1, prompt_tokens=100, completion_tokens=50, cost_pico_usd=300)}

    run(backend, scenario)


def test_settling_after_the_window_ended_leaves_that_window_alone(backend: Backend) -> None:
    limits = TenantLimits(tokens_per_minute=1000)

    async def scenario(store: TenantStore) -> None:
        reservation = reserve("r1", tokens=500)
        await store.admit(reservation, limits, NOW)
        assert await store.settle(reservation, Usage(100, 50, 0), NEXT_WINDOW)
        assert (await store.tenant_state("acme", limits, NEXT_WINDOW)).window_tokens == 0
        assert (await store.tenant_state("acme", limits, NOW)).window_tokens == 500

    run(backend, scenario)


def test_spend_sums_are_exact_in_pico_usd(backend: Backend) -> None:
    # Above 2**53, where a float sum would round.
    costs = {"a": [123_456_789_012_345_679, 3], "b": [987_654_321_098_765_431]}
    limits = TenantLimits()

    async def scenario(store: TenantStore) -> None:
        for model, model_costs in costs.items():
            for i, cost in enumerate(model_costs):
                reservation = reserve(f"{model}{i}", cost=cost + 1, model=model)
                await store.admit(reservation, limits, NOW)
                assert await store.settle(reservation, Usage(1, 2, cost), NOW)
        state = await store.tenant_state("acme", limits, NOW)
        assert {model: usage.cost_pico_usd for model, usage in state.models.items()} == {
            model: sum(model_costs) for model, model_costs in costs.items()
        }
        assert state.spent_pico_usd == 123_456_789_012_345_679 + 3 + 987_654_321_098_765_431
        assert state.models["a"] == ModelUsage(2, 2, 4, 123_456_789_012_345_682)

    run(backend, scenario)


def test_admitting_a_held_reservation_again_counts_it_once(backend: Backend) -> None:
    limits = TenantLimits(requests_per_minute=5)

    async def scenario(store: TenantStore) -> None:
        assert (await store.admit(reserve("r1"), limits, NOW)).admitted
        assert (await store.admit(reserve("r1"), limits, NOW)).limits.requests_remaining == 4
        state = await store.tenant_state("acme", limits, NOW)
        assert (state.window_requests, state.in_flight) == (1, 1)

    run(backend, scenario)


def test_a_reservation_for_another_window_is_refused_as_a_bug(backend: Backend) -> None:
    with pytest.raises(ValueError, match="window"):
        run(backend, lambda store: store.admit(reserve("r1"), TenantLimits(), NEXT_WINDOW))


@pytest.mark.parametrize("num_stores", [1, 2])
def test_twenty_concurrent_admits_against_a_budget_for_five_admit_exactly_five(
    backend: Backend, num_stores: int
) -> None:
    limits = TenantLimits(budget_pico_usd=500)

    async def scenario(store: TenantStore) -> None:
        stores = [store] + [backend.open() for _ in range(num_stores - 1)]
        admissions = await asyncio.gather(
            *(stores[i % num_stores].admit(reserve(f"r{i}", cost=100), limits, NOW) for i in range(20))
        )
        for other in stores[1:]:
            await other.close()
        assert sum(admission.admitted for admission in admissions) == 5
        assert {admission.refusal for admission in admissions if not admission.admitted} == {"budget"}
        assert (await store.tenant_state("acme", limits, NOW)).in_flight == 5

    run(backend, scenario)


def test_concurrent_settles_of_one_reservation_count_once(backend: Backend) -> None:
    limits = TenantLimits()
    reservation = reserve("r1", cost=100)

    async def scenario(store: TenantStore) -> None:
        other = backend.open()
        await store.admit(reservation, limits, NOW)
        settled = await asyncio.gather(
            *((store, other)[i % 2].settle(reservation, Usage(3, 4, 50), NOW) for i in range(10))
        )
        await other.close()
        assert sorted(settled) == [False] * 9 + [True]
        assert (await store.tenant_state("acme", limits, NOW)).models == {"m": ModelUsage(1, 3, 4, 50)}

    run(backend, scenario)

