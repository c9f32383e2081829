"""What one request may ask for: the Router refuses more, naming the limit, before any engine work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from deployments.config import RequestLimits
from deployments.ingress.openai_app import build_openai_app
from tests.unit.test_openai_app import BODIES, CARDS, MODEL, PATHS, FakeModelClient, openai_error

LIMITS = RequestLimits(max_body_bytes=4096, max_n=4, max_stop_sequences=2, max_stop_chars=8)


def post(
    endpoint: str, body: dict[str, object] | None = None, *, content: AsyncIterator[bytes] | None = None
) -> tuple[httpx.Response, FakeModelClient]:
    client = FakeModelClient()
    app = build_openai_app({MODEL: client}, CARDS, limits=LIMITS)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            if content is not None:
                return await http.post(PATHS[endpoint], content=content, headers={"content-type": "application/json"})
            return await http.post(PATHS[endpoint], json=body)

    return asyncio.run(go()), client


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_more_choices_than_max_n_are_refused_naming_the_limit(endpoint: str) -> None:
    response, client = post(endpoint, BODIES[endpoint] | {"n": 5})
    error = openai_error(response, 400)
    assert error["param"] == "n" and "max_n" in error["message"] and "4" in error["message"]
    assert client.requests == []


@pytest.mark.parametrize(
    ("stop", "limit"),
    [(["a", "b", "c"], "max_stop_sequences"), (["x" * 9], "max_stop_chars"), ("y" * 9, "max_stop_chars")],
)
def test_too_many_or_too_long_stop_strings_are_refused_naming_the_limit(stop: object, limit: str) -> None:
    response, client = post("completion", BODIES["completion"] | {"stop": stop})
    error = openai_error(response, 400)
    assert error["param"] == "stop" and limit in error["message"]
    assert client.requests == []


def test_requests_within_the_limits_are_served() -> None:
    response, client = post("completion", BODIES["completion"] | {"n": 4, "stop": ["ab", "x" * 8]})
    assert response.status_code == 200, response.text
    assert client.request.n == 4


def test_a_body_larger_than_max_body_bytes_is_413() -> None:
    body = BODIES["completion"] | {"prompt": "x" * 5000}
    response, client = post("completion", body)
    error = openai_error(response, 413)
    assert "max_body_bytes" in error["message"] and error["code"] == "request_too_large"
    assert client.requests == []


def test_a_streamed_body_without_a_length_is_cut_off_at_max_body_bytes() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(BODIES["completion"])[:-1].encode()
        for _ in range(10):
            yield b" " * 1000  # past the limit before the body ends
        yield b"}"

    response, _ = post("completion", content=chunks())
    assert openai_error(response, 413)["code"] == "request_too_large"
