"""The Router's per-model admission: refused where the request arrives, counted until its stream
ends however it ends."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator

import pytest

from deployments.errors import OverloadedError
from deployments.ingress.admission import Admission


async def numbers(count: int, fail_at: int | None = None) -> AsyncGenerator[int, None]:
    for number in range(count):
        if number == fail_at:
            raise RuntimeError("the replica died")
        yield number


def test_requests_beyond_the_limit_are_refused_at_once_and_admitted_again_once_one_ends() -> None:
    admission = Admission("demo")
    first, second = admission.admit(numbers(2), limit=2), admission.admit(numbers(2), limit=2)
    with pytest.raises(OverloadedError, match="Too many requests are queued for model 'demo'") as refused:
        admission.admit(numbers(2), limit=2)
    assert refused.value.status_code == 429 and refused.value.retry_after_s is not None

    async def drain() -> list[int]:
        return [number async for number in first]

    assert asyncio.run(drain()) == [0, 1]
    assert admission.held == 1
    third = admission.admit(numbers(1), limit=2)
    assert admission.held == 2
    del second, third


def test_a_stream_is_released_once_whether_it_fails_is_closed_or_is_dropped_unstarted() -> None:
    admission = Admission("demo")

    async def scenario() -> None:
        failing = admission.admit(numbers(3, fail_at=1), limit=None)
        with pytest.raises(RuntimeError):
            async for _ in failing:
                pass
        closed = admission.admit(numbers(3), limit=None)
        assert await anext(closed) == 0
        await closed.aclose()
        await closed.aclose()  # twice: still released once
        cancelled = admission.admit(numbers(3), limit=None)
        task = asyncio.ensure_future(anext(cancelled))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cancelled.aclose()

    asyncio.run(scenario())
    assert admission.held == 0
    unstarted = admission.admit(numbers(3), limit=None)
    assert admission.held == 1
    del unstarted
    gc.collect()
    assert admission.held == 0
