"""The Router's per-model queue: pass-through below capacity, fair across tenants above it."""

from __future__ import annotations

import asyncio

import pytest

from deployments.tenants.fair_queue import FairQueue, QueueFullError


async def _hold(queue: FairQueue, tenant: str, order: list[str], release: asyncio.Event, weight: float = 1.0) -> None:
    async with queue.slot(tenant, weight):
        order.append(tenant)
        await release.wait()


def test_below_capacity_nothing_waits() -> None:
    async def go() -> None:
        queue = FairQueue(capacity=2)
        order: list[str] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(_hold(queue, "a", order, release)) for _ in range(2)]
        await asyncio.sleep(0)
        assert order == ["a", "a"] and queue.num_waiting == 0
        release.set()
        await asyncio.gather(*tasks)
        assert queue.in_flight == 0

    asyncio.run(go())


async def _admission_order(arrivals: list[tuple[str, float]]) -> list[str]:
    """Tenants in the order they got the one slot; each holds it until the driver releases it."""
    queue = FairQueue(capacity=1)
    order: list[str] = []
    holders: list[asyncio.Event] = []

    async def request(tenant: str, weight: float) -> None:
        async with queue.slot(tenant, weight):
            order.append(tenant)
            release = asyncio.Event()
            holders.append(release)
            await release.wait()

    tasks = []
    for tenant, weight in arrivals:
        tasks.append(asyncio.create_task(request(tenant, weight)))
        await asyncio.sleep(0)  # every request is waiting before the first slot frees
    while len(holders) < len(arrivals) or not holders[-1].is_set():
        if holders and not holders[-1].is_set():
            holders[-1].set()  # the holder leaves; the queue picks who is next
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return order


def test_a_flooding_tenant_cannot_keep_a_later_tenant_waiting_behind_its_queue() -> None:
    arrivals = [("flood", 1.0)] * 6 + [("late", 1.0)]
    order = asyncio.run(_admission_order(arrivals))
    # The late tenant is lifted to the flood's counter on arrival, so it is next after one more.
    assert order.index("late") <= 2, order


def test_fcfs_within_one_tenant_and_weights_share_slots() -> None:
    heavy = [("heavy", 2.0)] * 6
    light = [("light", 1.0)] * 6
    order = asyncio.run(_admission_order([("first", 1.0)] + heavy + light))
    served = order[1:10]
    assert served.count("heavy") >= 2 * served.count("light") - 1, order


def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_no_trace() -> None:
    async def go() -> None:
        queue = FairQueue(capacity=1, max_waiting=1)
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(queue, "a", [], release))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_hold(queue, "b", [], release))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            async with queue.slot("c", 1.0):
                pass
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert queue.num_waiting == 0
        release.set()
        await holder
        assert queue.in_flight == 0

    asyncio.run(go())
