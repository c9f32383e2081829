"""The Router's queue in front of one model, fair across tenants.

Serve's own queue in front of busy replicas is first come, first served: a tenant that sends a
thousand requests at once would keep every later tenant's request behind them. So with tenants,
the Router dispatches at most `capacity` requests per model at once (what the model's running
replicas take, this replica's share of it) and holds the rest here, per tenant. A freed slot goes
to the waiting tenant that has been dispatched the fewest requests per unit of weight (a virtual
counter, as the engine's scheduler keeps in tokens); a tenant that starts waiting has its counter
lifted to the least waiting one's, so time spent idle is not saved up as credit. Below capacity
nothing waits: the queue costs nothing until the model is saturated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["FairQueue", "QueueFullError"]


class QueueFullError(Exception):
    """More requests wait than the model's max_queued_requests allows."""


@dataclass
class FairQueue:
    # Requests this router replica dispatches to the model at once (updated as replicas come and go).
    capacity: int
    # Most requests waiting here; -1: no limit.
    max_waiting: int = -1
    in_flight: int = 0
    # Dispatched requests per unit of weight, per tenant.
    counters: dict[str, float] = field(default_factory=dict)
    # The counter of the tenant granted last: where a tenant that starts waiting while no one else
    # waits is lifted to.
    virtual_time: float = 0.0
    _waiting: dict[str, deque[tuple[asyncio.Future[None], float]]] = field(default_factory=dict)

    @property
    def num_waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())

    @asynccontextmanager
    async def slot(self, tenant: str, weight: float) -> AsyncIterator[None]:
        """Hold one of the model's dispatch slots while the body runs."""
        await self._acquire(tenant, weight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._dispatch()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._dispatch()

    async def _acquire(self, tenant: str, weight: float) -> None:
        if self.in_flight < self.capacity and not self._waiting:
            self._grant(tenant, weight)
            return
        if 0 <= self.max_waiting <= self.num_waiting:
            raise QueueFullError(f"{self.num_waiting} requests are already waiting")
        if tenant not in self._waiting:
            self._lift(tenant)
            self._waiting[tenant] = deque()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[tenant].append((granted, weight))
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.in_flight -= 1  # granted just as the caller gave up: pass the slot on
                self._dispatch()
            else:
                self._forget(tenant, granted)
            raise

    def _grant(self, tenant: str, weight: float) -> None:
        self.in_flight += 1
        self.counters[tenant] = self.counters.get(tenant, 0.0) + 1.0 / weight
        self.virtual_time = self.counters[tenant]

    def _lift(self, tenant: str) -> None:
        waiting = [self.counters.get(name, 0.0) for name in self._waiting]
        floor = min(waiting) if waiting else self.virtual_time
        self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)

    def _dispatch(self) -> None:
        while self.in_flight < self.capacity and self._waiting:
            tenant = min(self._waiting, key=lambda name: self.counters.get(name, 0.0))
            waiters = self._waiting[tenant]
            granted, weight = waiters.popleft()
            if not waiters:
                del self._waiting[tenant]
            if granted.done():  # cancelled while waiting; its caller is cleaning up
                continue
            self._grant(tenant, weight)
            granted.set_result(None)

    def _forget(self, tenant: str, granted: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(tenant)
        if waiters is None:
            return
        for entry in list(waiters):
            if entry[0] is granted:
                waiters.remove(entry)
        if not waiters:
            del self._waiting[tenant]
