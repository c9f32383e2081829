"""Every error the API promises, end to end through Serve, with its status and OpenAI-shaped body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from ray import serve

from deployments.app import build_app
from deployments.config import RequestLimits
from deployments.ingress.openai_app import model_card
from deployments.ingress.router import ModelRoute, Router
from tests.serve.conftest import ServeCluster
from tests.serve.fault_servers import CrashingServer, DeadEngineServer

ERROR_FIELDS = {"message", "type", "param", "code"}


def error_of(response: httpx.Response) -> dict[str, str | None]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    return body["error"]


@pytest.fixture(scope="module")
def tight_app(serve_cluster: ServeCluster) -> str:
    """One demo model that runs one request at a time and queues at most one more."""
    args = serve_cluster.demo_app_args(
        "tight",
        engine={"max_model_len": 256, "num_kv_blocks": 64},
        deployment={"max_ongoing_requests": 1, "max_queued_requests": 1},
    )
    return serve_cluster.deploy("tight", build_app(args))


@pytest.fixture(scope="module")
def faults_app(serve_cluster: ServeCluster) -> Iterator[str]:
    """The real Router in front of two deployments that fail on purpose."""
    handles = {
        "dead-engine": serve.deployment(DeadEngineServer).options(name="LLMServer:dead-engine").bind(),
        "crashing": serve.deployment(CrashingServer).options(name="LLMServer:crashing").bind(),
    }
    cards = [model_card(name, "test") for name in handles]
    routes = {
        name: ModelRoute(f"LLMServer:{name}", cold_start_timeout_s=60, first_token_timeout_s=60) for name in handles
    }
    router = serve.deployment(Router).options(name="Router")
    url = serve_cluster.deploy(
        "faults", router.bind(handles, routes, cards, keepalive_interval_s=5.0, limits=RequestLimits())
    )
    yield url
    serve.delete("faults")


def test_unknown_model_is_404_naming_it(multi_model_app: str) -> None:
    client = openai.OpenAI(base_url=f"{multi_model_app}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
    error = error_of(raised.value.response)
    assert "gpt-17" in error["message"] and error["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "llama-demo", "prompt": "hi", "temperature": 7}, "temperature"),
        ({"model": "llama-demo", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "llama-demo", "prompt": "hi", "best_of": 3}, "best_of"),
        ({"model": "llama-demo", "prompt": "hi", "frobnicate": True}, "frobnicate"),
        ({"model": "llama-demo"}, "prompt"),
        ({"model": "llama-demo", "prompt": [1, 2, 999999]}, None),
    ],
)
def test_invalid_fields_are_400_with_an_openai_body(multi_model_app: str, body: dict, param: str | None) -> None:
    response = httpx.post(f"{multi_model_app}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_malformed_json_is_400_not_422(multi_model_app: str) -> None:
    response = httpx.post(
        f"{multi_model_app}/v1/chat/completions",
        content=b'{"model": "llama-demo", "messages": [',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "JSON" in error_of(response)["message"]


def test_prompt_beyond_the_context_is_400_context_length_exceeded(multi_model_app: str) -> None:
    client = openai.OpenAI(base_url=f"{multi_model_app}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="qwen-demo", prompt="word " * 900, max_tokens=512)
    error = error_of(raised.value.response)
    assert error["code"] == "context_length_exceeded" and "1024" in error["message"]


def test_overload_is_429_with_retry_after_and_accepted_requests_complete(tight_app: str) -> None:
    body = {"model": "tight", "prompt": "overload", "max_tokens": 150, "ignore_eos": True}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{tight_app}/v1/completions", json=body) for _ in range(6)))

    responses = asyncio.run(burst())
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 1, statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert error_of(response)["type"] == "rate_limit_error"
        else:
            assert response.json()["usage"]["completion_tokens"] == 150


def test_engine_failure_is_500_without_internals(faults_app: str) -> None:
    body = {"model": "dead-engine", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{faults_app}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 500
    text = json.dumps(error_of(response))
    assert "secret" not in text and "RuntimeError" not in text and "Traceback" not in text


def test_replica_that_dies_mid_request_is_503_with_retry_after(faults_app: str) -> None:
    body = {"model": "crashing", "prompt": "hi"}
    response = httpx.post(f"{faults_app}/v1/completions", json=body, timeout=120)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert error_of(response)["type"] == "service_unavailable_error"
