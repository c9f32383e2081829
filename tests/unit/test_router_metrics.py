"""The Router's metrics and request log over a fake ModelClient: every request is counted once under
its status (499 for a client that left), refusals under their reason, and logged as one JSON line
that carries ids and counts but never the prompt or the completion."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from deployments.errors import (
    ApiError,
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
)
from deployments.ingress.openai_app import build_openai_app
from deployments.observability.request_log import OTHER_MODEL
from deployments.observability.router_metrics import REJECTION_REASONS
from deployments.observability.router_recorder import RouterMetrics
from engine.metrics import PrometheusBackend
from tests.unit.test_openai_app import BODIES, CARDS, MODEL, PATHS, TEXT, FakeModelClient, chunk

SECRET_PROMPT = "my password is hunter2"


class Registry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(PrometheusBackend(self.registry))

    def value(self, name: str, **labels: str) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def app_with(registry: Registry, client: FakeModelClient | None = None) -> FastAPI:
    models = {MODEL: client or FakeModelClient(), "org/other-7b": FakeModelClient()}
    return build_openai_app(models, CARDS, metrics=registry.metrics)


def send(app: FastAPI, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await http.post(PATHS[endpoint], json=body)

    return asyncio.run(go())


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith('{"event":"request"'):
            lines.append(json.loads(message))
    return lines


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_served_request_is_counted_timed_and_logged_once(
    endpoint: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    caplog.set_level(logging.INFO, logger="ray.serve")
    body = BODIES[endpoint] | {"stream": stream}
    if endpoint == "completion":
        body["prompt"] = SECRET_PROMPT
    else:
        body["messages"] = [{"role": "user", "content": SECRET_PROMPT}]
    response = send(app_with(registry), endpoint, body)
    assert response.status_code == 200
    labels = {"model": MODEL, "endpoint": endpoint}
    assert registry.value("switchyard_router_requests_total", **labels, status_code="200", tenant="anonymous") == 1
    assert registry.value("switchyard_router_request_duration_seconds_count", **labels) == 1
    # Only a stream's first chunk is its first token (a whole answer's comes when it is done).
    assert registry.value("switchyard_router_time_to_first_token_seconds_count", **labels) == int(stream)
    assert registry.value("switchyard_router_rejections_total") == 0
    [line] = request_lines(caplog)
    assert line["status"] == 200 and line["model"] == MODEL and line["endpoint"] == endpoint
    assert line["request_id"].startswith("cmpl-" if endpoint == "completion" else "chatcmpl-")
    assert (line["prompt_tokens"], line["completion_tokens"], line["finish_reason"]) == (5, 3, "stop")
    assert (0 <= line["ttft_s"] <= line["e2e_s"]) if stream else line["ttft_s"] is None
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert SECRET_PROMPT not in logged and TEXT not in logged


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (InvalidRequestError("bad"), "bad_request"),
        (RequestTooLargeError("big"), "bad_request"),
        (AuthenticationError("who"), "bad_key"),
        (ModelNotFoundError("where"), "model_not_found"),
        (RateLimitError("slow down"), "rate_limited"),
        (QuotaExceededError("spent"), "over_budget"),
        (OverloadedError("full"), "queue_full"),
        (ModelUnavailableError("later"), "unavailable"),
    ],
)
def test_a_refused_request_is_counted_under_its_reason(error: ApiError, reason: str) -> None:
    assert reason in REJECTION_REASONS
    registry = Registry()
    response = send(app_with(registry, FakeModelClient(error=error)), "chat", BODIES["chat"])
    assert response.status_code == error.status_code
    status = str(error.status_code)
    assert registry.value("switchyard_router_requests_total", model=MODEL, status_code=status) == 1
    assert registry.value("switchyard_router_rejections_total", model=MODEL, reason=reason) == 1


def test_a_body_that_is_not_json_is_a_bad_request_of_no_model(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    caplog.set_level(logging.INFO, logger="ray.serve")

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app_with(registry)), base_url="http://t"
        ) as http:
            return await http.post(PATHS["chat"], content=b"{not json")

    assert asyncio.run(go()).status_code == 400
    assert registry.value("switchyard_router_rejections_total", model="", reason="bad_request") == 1
    [line] = request_lines(caplog)
    assert line["status"] == 400 and line["model"] is None and line["error_code"] == "invalid_request_error"


def test_unknown_models_share_one_label_so_clients_cannot_add_series(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    caplog.set_level(logging.INFO, logger="ray.serve")
    for name in ("nope", "nope-2", "x" * 200):
        assert send(app_with(registry), "chat", BODIES["chat"] | {"model": name}).status_code == 404
    assert registry.value("switchyard_router_rejections_total", model=OTHER_MODEL, reason="model_not_found") == 3
    labels = {sample.labels.get("model") for metric in registry.registry.collect() for sample in metric.samples}
    assert labels <= {OTHER_MODEL, None}
    assert [line["model"] for line in request_lines(caplog)] == ["nope", "nope-2", "x" * 200]  # logged as sent


def test_a_stream_that_fails_after_its_200_counts_the_failure_status_but_no_refusal() -> None:
    registry = Registry()
    client = FakeModelClient(
        [chunk("a", 1), chunk("b", 2)], error=ModelUnavailableError("gone"), num_chunks_before_error=1
    )
    response = send(app_with(registry, client), "completion", BODIES["completion"] | {"stream": True})
    assert response.status_code == 200 and '"error"' in response.text
    assert registry.value("switchyard_router_requests_total", status_code="503") == 1
    assert registry.value("switchyard_router_requests_total", status_code="200") == 0
    assert registry.value("switchyard_router_rejections_total") == 0


def test_a_request_over_a_limit_is_counted_under_the_model_it_named(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    caplog.set_level(logging.INFO, logger="ray.serve")
    assert send(app_with(registry), "completion", BODIES["completion"] | {"n": 100}).status_code == 400
    assert registry.value("switchyard_router_rejections_total", model=MODEL, reason="bad_request") == 1
    [line] = request_lines(caplog)
    assert line["model"] == MODEL


def test_a_broken_metrics_backend_fails_no_request() -> None:
    class Broken:
        def instrument(self, spec: object) -> Broken:
            return self

        def inc(self, amount: float, labels: object) -> None:
            raise RuntimeError("backend down")

        observe = set = inc

    app = build_openai_app({MODEL: FakeModelClient()}, CARDS, metrics=RouterMetrics(Broken()))
    for stream in (False, True):
        response = send(app, "completion", BODIES["completion"] | {"stream": stream})
        assert response.status_code == 200 and '"error"' not in response.text


def test_a_client_that_leaves_mid_stream_is_counted_as_499_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    caplog.set_level(logging.INFO, logger="ray.serve")
    client = SlowClient([chunk(str(i), i + 1) for i in range(200)])
    with serving(app_with(registry, client)) as base_url:
        body = BODIES["completion"] | {"stream": True}
        with httpx.stream("POST", base_url + PATHS["completion"], json=body) as response:
            for _ in response.iter_lines():
                break  # leave after the first event
        deadline = time.monotonic() + 10
        while not request_lines(caplog):  # the server notices the disconnect on its own schedule
            assert time.monotonic() < deadline, "the request never ended"
            time.sleep(0.01)
    assert registry.value("switchyard_router_requests_total", status_code="499") == 1
    assert registry.value("switchyard_router_requests_total") == 1
    [line] = request_lines(caplog)
    assert line["status"] == 499 and line["finish_reason"] is None and line["completion_tokens"] < 200


class SlowClient(FakeModelClient):
    async def stream(self, request: Any) -> Any:  # type: ignore[override]
        async for item in super().stream(request):
            await asyncio.sleep(0.01)
            yield item


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` on uvicorn at 127.0.0.1 (a real connection, so a client leaving is seen); its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
