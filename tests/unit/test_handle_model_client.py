"""The Router's client for one model: the bounds on the first token, and states that fail."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deployments.errors import ModelUnavailableError, OverloadedError
from deployments.generation import GenerationChunk
from deployments.ingress.model_states import ModelState
from deployments.ingress.router import HandleModelClient, ModelRoute

CHUNKS = [GenerationChunk(0, text, [7], None, None, 3, i + 1) for i, text in enumerate("abc")]


class SlowResponses:
    """A streaming response whose first chunk comes after `delay_s`, the rest at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.cancelled = False
        self._chunks = self._generate()

    async def _generate(self) -> AsyncIterator[GenerationChunk]:
        await asyncio.sleep(self.delay_s)
        for chunk in CHUNKS:
            yield chunk

    def __aiter__(self) -> SlowResponses:
        return self

    async def __anext__(self) -> GenerationChunk:
        return await anext(self._chunks)

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """Stands in for a DeploymentHandle: `options(stream=True).generate.remote(request)`."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.responses: list[SlowResponses] = []
        self.generate = self

    def options(self, **_: Any) -> FakeHandle:
        return self

    def remote(self, _request: object) -> SlowResponses:
        self.responses.append(SlowResponses(self.delay_s))
        return self.responses[-1]


class FixedStates:
    def __init__(self, states: dict[str, ModelState]) -> None:
        self._states = states

    async def states(self) -> dict[str, ModelState]:
        return self._states


def client(
    handle: FakeHandle, state: ModelState | None, timeout_s: float, first_token_timeout_s: float = 60.0
) -> HandleModelClient:
    states = FixedStates({} if state is None else {"m": state})
    route = ModelRoute("LLMServer:m", cold_start_timeout_s=timeout_s, first_token_timeout_s=first_token_timeout_s)
    return HandleModelClient("m", handle, route, states)  # type: ignore[arg-type]


async def collect(model: HandleModelClient) -> list[str]:
    return [chunk.text async for chunk in model.stream(object())]  # type: ignore[arg-type]


def test_a_model_at_zero_replicas_bounds_the_wait_for_its_first_token() -> None:
    handle = FakeHandle(delay_s=0.5)
    with pytest.raises(ModelUnavailableError, match=r"no first token within 0s") as raised:
        asyncio.run(collect(client(handle, ModelState("scaled_to_zero", 0, 0), timeout_s=0.1)))
    assert raised.value.retry_after_s == 1
    assert handle.responses[0].cancelled  # the held request leaves the queue


@pytest.mark.parametrize("state", [ModelState("ready", 1, 0), None], ids=["running-replica", "states-unknown"])
def test_a_request_to_a_running_model_waits_up_to_its_first_token_timeout(state: ModelState | None) -> None:
    handle = FakeHandle(delay_s=0.3)
    assert asyncio.run(collect(client(handle, state, timeout_s=0.1, first_token_timeout_s=5.0))) == ["a", "b", "c"]
    assert not handle.responses[0].cancelled


@pytest.mark.parametrize("state", [ModelState("ready", 1, 0), None], ids=["running-replica", "states-unknown"])
def test_a_request_judged_warm_is_still_bounded_by_its_first_token_timeout(state: ModelState | None) -> None:
    # The model scaled to zero just after the state was read: without a bound it would wait forever.
    handle = FakeHandle(delay_s=0.5)
    with pytest.raises(ModelUnavailableError, match=r"no first token within 0s") as raised:
        asyncio.run(collect(client(handle, state, timeout_s=60.0, first_token_timeout_s=0.1)))
    assert raised.value.code == "first_token_timeout"
    assert handle.responses[0].cancelled


def test_the_project_requires_a_python_whose_wait_for_raises_the_builtin_timeout_error() -> None:
    # On Python 3.10 asyncio.wait_for raises asyncio.TimeoutError, which `except TimeoutError` in
    # the first-token bound does not catch (a 500 instead of a 503): 3.10 is not supported.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert asyncio.TimeoutError is TimeoutError


def test_requests_beyond_the_running_replicas_and_the_queue_bound_are_refused_where_they_arrive() -> None:
    states = FixedStates({"m": ModelState("ready", 2, 0)})
    route = ModelRoute("LLMServer:m", 60.0, 60.0, max_ongoing_requests=2, max_queued_requests=1)
    model = HandleModelClient("m", FakeHandle(delay_s=0.2), route, states)  # type: ignore[arg-type]

    async def scenario() -> list[str]:
        first = model.stream(object())  # type: ignore[arg-type]
        assert [chunk.text async for chunk in first] == ["a", "b", "c"]  # the state is read: 2 replicas
        held = [model.stream(object()) for _ in range(2 * 2 + 1)]  # type: ignore[arg-type]
        with pytest.raises(OverloadedError, match="Too many requests are queued for model 'm'"):
            model.stream(object())  # type: ignore[arg-type]
        texts = [chunk.text for chunk in [await anext(stream) for stream in held]]
        for stream in held:
            await stream.aclose()
        return texts

    assert asyncio.run(scenario()) == ["a"] * 5
    assert model.admission.held == 0


def test_each_router_replica_admits_its_share_of_the_model_replicas_plus_its_own_queue() -> None:
    # Serve's queue bound is per caller but the replicas are shared: two Routers each admitting
    # every replica's worth would queue twice the bound in all, refused by Serve mid stream.
    states = FixedStates({"m": ModelState("ready", 2, 0)})
    route = ModelRoute("LLMServer:m", 60.0, 60.0, max_ongoing_requests=4, max_queued_requests=1)
    model = HandleModelClient("m", FakeHandle(delay_s=0.2), route, states, router_replicas=2)  # type: ignore[arg-type]

    async def scenario() -> None:
        first = model.stream(object())  # type: ignore[arg-type]
        assert [chunk.text async for chunk in first] == ["a", "b", "c"]
        held = [model.stream(object()) for _ in range(2 * 4 // 2 + 1)]  # type: ignore[arg-type]
        with pytest.raises(OverloadedError):
            model.stream(object())  # type: ignore[arg-type]
        for stream in held:
            await stream.aclose()

    asyncio.run(scenario())
    assert model.admission.held == 0
