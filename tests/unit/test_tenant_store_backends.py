"""What only one kind of tenant store does: SQLite's file (home, folders, schema, a lock held too long, a
file that is not a database, cleanup as it goes); Redis's windows expiring by themselves, and a dead
or hung Redis failing fast, counting nothing, with the same store object working again once Redis is back."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from deployments.config import AuthSettings
from deployments.tenants.redis_store import WINDOW_TTL_S, RedisStore
from deployments.tenants.sqlite_store import SqliteStore
from deployments.tenants.store import (
    SECONDS_PER_WINDOW,
    KeyRecord,
    Reservation,
    StoreUnavailableError,
    TenantLimits,
    TenantStore,
    Usage,
    open_auth_store,
    open_store,
)
from tests.services import RedisServer
from tests.unit.test_tenant_stores import NOW, WINDOW, key, reserve


def test_open_store_picks_the_store_by_url_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/tenants.db"), SqliteStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)
    with pytest.raises(ValueError, match="postgres"):
        open_store("postgres://db/tenants")


def test_a_redis_password_comes_from_the_environment_where_the_url_names_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret")
    server.start()
    try:
        without = open_auth_store(AuthSettings(store=server.url, store_password_env="TEST_STORE_PASSWORD"))
        with pytest.raises(StoreUnavailableError):
            asyncio.run(_create_key_and_close(without, key("k0", "a", NOW)))
        monkeypatch.setenv("TEST_STORE_PASSWORD", "s3cret")
        store = open_auth_store(AuthSettings(store=server.url, store_password_env="TEST_STORE_PASSWORD"))
        asyncio.run(_create_key_and_close(store, key("k1", "a", NOW)))
        assert redis.Redis(port=server.port, password="s3cret").hexists("switchyard:{keys}", "k1")
    finally:
        server.stop()


# ----- SQLite ------------------------------------------------------------------------------------


def test_sqlite_expands_home_and_creates_the_folders_and_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    asyncio.run(_create_key_and_close(SqliteStore("~/state/tenants.db"), key("k1", "a", NOW)))
    assert (tmp_path / "state" / "tenants.db").is_file()


def test_sqlite_locked_beyond_the_busy_timeout_is_unavailable_then_works_again(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    asyncio.run(_create_key_and_close(SqliteStore(str(path)), key("k1", "a", NOW)))
    # Another writer (the `switchyard keys` CLI, say) holds the write lock.
    other_writer = sqlite3.connect(path, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")

    async def scenario() -> None:
        store = SqliteStore(str(path), busy_timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="locked"):
            await store.admit(reserve("r1"), TenantLimits(), NOW)
        assert time.monotonic() - started < 2
        other_writer.execute("ROLLBACK")
        assert (await store.admit(reserve("r1"), TenantLimits(), NOW)).admitted
        await store.close()

    asyncio.run(scenario())
    other_writer.close()


def test_a_file_that_is_not_a_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="tenants.db"):
        asyncio.run(_create_key_and_close(SqliteStore(str(path)), key("k1", "a", NOW)))


def test_sqlite_admits_delete_old_windows_and_expired_reservations(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"

    async def scenario() -> None:
        store = SqliteStore(str(path))
        for minute in range(5):
            now = NOW + minute * SECONDS_PER_WINDOW
            await store.admit(reserve(f"r{minute}", now=now, ttl_s=90), TenantLimits(), now)
        await store.close()

    asyncio.run(scenario())
    connection = sqlite3.connect(path)
    windows = [window for (window,) in connection.execute("SELECT window FROM windows ORDER BY window")]
    held = [held for (held,) in connection.execute("SELECT reservation_id FROM reservations ORDER BY 1")]
    connection.close()
    # The last admit (minute 4) kept its window and the one before, and the reservation of minute 3 (90 s).
    assert (windows, held) == ([WINDOW + 3, WINDOW + 4], ["r3", "r4"])


async def _create_key_and_close(store: TenantStore, record: KeyRecord) -> None:
    try:
        await store.create_key(record)
    finally:
        await store.close()


# ----- Redis -------------------------------------------------------------------------------------


def test_redis_windows_expire_by_themselves(redis_server: RedisServer) -> None:
    asyncio.run(_admit_and_close(RedisStore(redis_server.url), reserve("r1")))
    client = redis.Redis.from_url(redis_server.url)
    assert 0 < client.ttl(f"switchyard:{{acme}}:window:{WINDOW}") <= WINDOW_TTL_S
    client.close()


def test_a_dead_redis_fails_fast_counts_nothing_and_the_same_store_works_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    limits = TenantLimits(max_concurrent_requests=10)
    held = reserve("r1", cost=5)

    async def scenario() -> None:
        store = RedisStore(redis_server.url)
        await store.create_key(key("k1", "a", NOW))
        await store.admit(held, limits, NOW)
        redis_server.kill()
        for call in (
            lambda: store.admit(reserve("r2"), limits, NOW),
            lambda: store.settle(held, Usage(1, 1, 5), NOW),
            lambda: store.get_key("k1"),
            lambda: store.tenant_state("acme", limits, NOW),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=str(redis_server.port)):
                await call()
            assert time.monotonic() - started < 3
        redis_server.start()
        # The same object, its pooled connections dead: it reconnects, and what was written survived.
        assert await store.get_key("k1") == key("k1", "a", NOW)
        state = await store.tenant_state("acme", limits, NOW)
        assert (state.window_requests, state.in_flight, state.models) == (1, 1, {})
        assert await store.settle(held, Usage(1, 1, 5), NOW)
        await store.close()

    asyncio.run(scenario())


def test_a_hung_redis_times_out_in_seconds_and_the_store_works_once_it_answers(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisStore(redis_server.url)
        await store.get_key("k1")  # connected
        redis_server.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="Timeout"):
            await store.admit(reserve("r1"), TenantLimits(), NOW)
        assert time.monotonic() - started < 3
        redis_server.resume()
        assert (await store.admit(reserve("r2"), TenantLimits(), NOW)).limits.reset_s > 0
        await store.close()

    asyncio.run(scenario())


async def _admit_and_close(store: TenantStore, reservation: Reservation) -> None:
    try:
        await store.admit(reservation, TenantLimits(), NOW)
    finally:
        await store.close()


def test_a_new_sqlite_file_opened_while_another_store_writes_to_it_waits_for_wal(tmp_path: Path) -> None:
    """Switching a file to WAL mode fails at once, busy timeout or not, while another connection
    holds its write lock: the store retries it within its busy timeout."""
    path = tmp_path / "tenants.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE held (x)")
    store = SqliteStore(str(path), busy_timeout_s=5.0)
    threading.Timer(0.2, writer.execute, args=("COMMIT",)).start()
    assert asyncio.run(store.list_keys()) == []
    asyncio.run(store.close())
    writer.close()
