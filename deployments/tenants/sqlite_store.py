"""The embedded tenant store: one SQLite file, for one router replica on one node.

The `switchyard keys` CLI may open the same file from another process at the same time, so every
update is one `BEGIN IMMEDIATE` transaction: it takes the write lock before it reads anything, so no
two admits (or settles) can interleave their read and their write, in this process or another. WAL
mode lets readers go on while one writes; a lock held beyond the busy timeout raises
StoreUnavailableError. sqlite3 blocks, so one worker thread owns the connection and runs every
operation; the event loop only awaits it.

    keys          key_id PK, tenant, key_hash, description, created_at, expires_at, revoked_at
    windows       (tenant, window) PK, requests, tokens
    reservations  reservation_id PK, tenant, model, tokens, cost_pico_usd, window, period, expires_at
    spend         (tenant, period, model) PK, requests, prompt_tokens, completion_tokens, cost_pico_usd

Each admit deletes its tenant's windows older than the previous one (at most a few rows) and up to
CLEANUP_BATCH of its expired reservations; the counts never include expired ones either way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, fields
from pathlib import Path
from typing import TypeVar

from deployments.tenants._store_rules import TenantCounts, admission, check_admitted_now, find_refusal
from deployments.tenants.store import (
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

__all__ = ["BUSY_TIMEOUT_S", "CLEANUP_BATCH", "SqliteStore"]

# How long a call waits for another connection's write lock (the CLI's, another store's) before
# giving up; transactions here last well under a millisecond, so only a stuck writer waits this long.
BUSY_TIMEOUT_S = 2.0
# Pause between tries to switch a new file to WAL mode while another connection writes to it.
_WAL_RETRY_S = 0.01

# Expired reservations deleted per admit at most, so a tenant whose router died mid-burst does not
# make one admit pay for all of them.
CLEANUP_BATCH = 100

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_hash TEXT NOT NULL, description TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL
);
CREATE INDEX IF NOT EXISTS keys_by_tenant ON keys (tenant, created_at);
CREATE TABLE IF NOT EXISTS windows (
    tenant TEXT NOT NULL, window INTEGER NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant, window)
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL,
    cost_pico_usd INTEGER NOT NULL, window INTEGER NOT NULL, period INTEGER NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_tenant ON reservations (tenant, expires_at);
CREATE TABLE IF NOT EXISTS spend (
    tenant TEXT NOT NULL, period INTEGER NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost_pico_usd INTEGER NOT NULL,
    PRIMARY KEY (tenant, period, model)
);
COMMIT;
"""

# The keys and reservations tables' columns are their records' fields, in the same order.
_KEY_COLUMNS = ", ".join(column.name for column in fields(KeyRecord))
_RESERVATION_COLUMNS = ", ".join(column.name for column in fields(Reservation))

_T = TypeVar("_T")
_Work = Callable[[sqlite3.Connection], _T]


class SqliteStore:
    """A TenantStore in the SQLite file at `path` (`~` expanded; the file, its folders and the schema
    are created on first use)."""

    def __init__(self, path: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self._path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        # Opened by the worker on its first call, and used by it alone.
        self._connection: sqlite3.Connection | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

    async def create_key(self, record: KeyRecord) -> None:
        def work(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", astuple(record))
            except sqlite3.IntegrityError:
                raise ValueError(f"key id {record.key_id!r} is already in use") from None

        await self._call(work)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        def work(connection: sqlite3.Connection) -> KeyRecord | None:
            row = connection.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else KeyRecord(*row)

        return await self._call(work)

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        def work(connection: sqlite3.Connection) -> list[KeyRecord]:
            where, args = ("", ()) if tenant is None else ("WHERE tenant = ?", (tenant,))
            query = f"SELECT {_KEY_COLUMNS} FROM keys {where} ORDER BY created_at, key_id"
            return [KeyRecord(*row) for row in connection.execute(query, args)]

        return await self._call(work)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            query = "UPDATE keys SET revoked_at = coalesce(revoked_at, ?) WHERE key_id = ?"
            return connection.execute(query, (now, key_id)).rowcount > 0

        return await self._call(work)

    async def admit(self, reservation: Reservation, limits: TenantLimits, now: float) -> Admission:
        check_admitted_now(reservation, limits, now)
        tenant, window = reservation.tenant, reservation.window

        def work(connection: sqlite3.Connection) -> Admission:
            connection.execute("DELETE FROM windows WHERE tenant = ? AND window < ?", (tenant, window - 1))
            connection.execute(
                "DELETE FROM reservations WHERE rowid IN (SELECT rowid FROM reservations"
                " WHERE tenant = ? AND expires_at <= ? LIMIT ?)",
                (tenant, now, CLEANUP_BATCH),
            )
            counts = _counts(connection, tenant, window, reservation.period, now)
            held = connection.execute(
                "SELECT 1 FROM reservations WHERE reservation_id = ? AND expires_at > ?",
                (reservation.reservation_id, now),
            ).fetchone()
            # Admitting a reservation already held (a retried call) counts nothing more.
            refusal = None if held else find_refusal(counts, reservation, limits)
            if held or refusal is not None:
                return admission(refusal, reservation, limits, now, counts.window_requests, counts.window_tokens)
            connection.execute(
                "INSERT INTO windows (tenant, window, requests, tokens) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (tenant, window)"
                " DO UPDATE SET requests = requests + 1, tokens = tokens + excluded.tokens",
                (tenant, window, reservation.tokens),
            )
            # REPLACE: an expired reservation of the same id may still be there, not yet cleaned up.
            connection.execute(
                f"INSERT OR REPLACE INTO reservations ({_RESERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                astuple(reservation),
            )
            requests, tokens = counts.window_requests + 1, counts.window_tokens + reservation.tokens
            return admission(None, reservation, limits, now, requests, tokens)

        return await self._call(work, begin="BEGIN IMMEDIATE")

    async def settle(self, reservation: Reservation, usage: Usage, now: float) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            # What the admission stored is what gets settled, whatever the caller's copy says.
            rows = connection.execute(
                "DELETE FROM reservations WHERE reservation_id = ?"
                " RETURNING tenant, model, tokens, window, period, expires_at",
                (reservation.reservation_id,),
            ).fetchall()
            if not rows:
                return False
            tenant, model, reserved_tokens, window, period, expires_at = rows[0]
            if expires_at <= now:
                return False  # its router gave it up; it is deleted now, and records nothing
            connection.execute(
                "INSERT INTO spend VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (tenant, period, model) DO UPDATE SET"
                " requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens,"
                " cost_pico_usd = cost_pico_usd + excluded.cost_pico_usd",
                (tenant, period, model, usage.prompt_tokens, usage.completion_tokens, usage.cost_pico_usd),
            )
            if window == window_index(now):
                used = usage.prompt_tokens + usage.completion_tokens
                connection.execute(
                    "UPDATE windows SET tokens = tokens + ? WHERE tenant = ? AND window = ?",
                    (used - reserved_tokens, tenant, window),
                )
            return True

        return await self._call(work, begin="BEGIN IMMEDIATE")

    async def tenant_state(self, tenant: str, limits: TenantLimits, now: float) -> TenantState:
        period = period_index(now, limits.budget_period_s)

        def work(connection: sqlite3.Connection) -> TenantState:
            counts = _counts(connection, tenant, window_index(now), period, now)
            rows = connection.execute(
                "SELECT model, requests, prompt_tokens, completion_tokens, cost_pico_usd FROM spend"
                " WHERE tenant = ? AND period = ? ORDER BY model",
                (tenant, period),
            )
            return TenantState(
                window_requests=counts.window_requests,
                window_tokens=counts.window_tokens,
                in_flight=counts.in_flight,
                reserved_pico_usd=counts.reserved_pico_usd,
                models={model: ModelUsage(*figures) for model, *figures in rows},
            )

        # A read transaction: one snapshot for all of the tenant's figures.
        return await self._call(work, begin="BEGIN")

    async def close(self) -> None:
        await asyncio.wrap_future(self._worker.submit(self._close_connection))
        self._worker.shutdown()

    async def _call(self, work: _Work[_T], begin: str | None = None) -> _T:
        """Run `work` on the worker thread, inside a transaction started by `begin` (None: none)."""
        return await asyncio.wrap_future(self._worker.submit(self._run, work, begin))

    def _run(self, work: _Work[_T], begin: str | None) -> _T:
        try:
            connection = self._connection or self._open()
            if begin is None:
                return work(connection)
            connection.execute(begin)
            try:
                result = work(connection)
                connection.execute("COMMIT")
                return result
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug here, not an outage
        except (sqlite3.DatabaseError, OSError) as error:
            # Locked beyond the busy timeout, not a database file, unreadable, disk full.
            raise StoreUnavailableError(f"the SQLite tenant store {self._path} is unavailable: {error}") from error

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each call begins its own.
        connection = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            self._use_wal(connection)
            # In WAL mode NORMAL loses no committed transaction when a process crashes, only on power
            # loss (the last few), and saves an fsync per admit and per settle.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL mode (it stays so). Switching a file another connection is writing
        to fails at once, without the busy timeout's wait (as when two stores, or a store and the
        keys CLI, open a new file together): retry until the timeout, as a busy lock would wait."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(_WAL_RETRY_S)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _counts(connection: sqlite3.Connection, tenant: str, window: int, period: int, now: float) -> TenantCounts:
    in_flight, reserved = connection.execute(
        "SELECT count(*), coalesce(sum(cost_pico_usd), 0) FROM reservations WHERE tenant = ? AND expires_at > ?",
        (tenant, now),
    ).fetchone()
    requests, tokens = connection.execute(
        "SELECT requests, tokens FROM windows WHERE tenant = ? AND window = ?", (tenant, window)
    ).fetchone() or (0, 0)
    (spent,) = connection.execute(
        "SELECT coalesce(sum(cost_pico_usd), 0) FROM spend WHERE tenant = ? AND period = ?", (tenant, period)
    ).fetchone()
    return TenantCounts(requests, tokens, in_flight, reserved, spent)

