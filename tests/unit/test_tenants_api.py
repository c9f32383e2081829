"""Tenants at the Router, through the real `openai` client over real HTTP (uvicorn on 127.0.0.1),
with a real SQLite store in a temporary directory; the models are fakes at the ModelClient seam.

Each error's status, body and headers; /v1/models per tenant; exact accounting under concurrency;
budgets never overshot; aborted streams; the admin API; a store that goes away and comes back.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from deployments.config import AppConfig
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.ingress.admin import add_admin_routes
from deployments.ingress.openai_app import ModelCard, build_openai_app
from deployments.observability.router_recorder import RouterMetrics
from deployments.tenants.gate import TenantAccess, TenantGate
from deployments.tenants.key_admin import create_key
from deployments.tenants.store import TenantStore, open_store
from engine.metrics import PrometheusBackend

PROMPT_TOKENS = 5
ADMIN_KEY = "admin-secret-for-tests"
# USD per million tokens: a prompt token costs 1 micro-USD, a generated token 2.
PRICING = {"input_per_million": 1.0, "output_per_million": 2.0}


class FakeModel:
    """Generates `max_tokens` (default 4) one-token chunks, `delay_s` apart, the first after
    `first_delay_s` more."""

    def __init__(self, delay_s: float = 0.0, first_delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.first_delay_s = first_delay_s
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.requests.append(request)
        await asyncio.sleep(self.first_delay_s)
        num_tokens = request.max_tokens or 4
        for index in range(request.n):
            for generated in range(1, num_tokens + 1):
                await asyncio.sleep(self.delay_s)
                finish = "length" if generated == num_tokens else None
                yield GenerationChunk(index, f"t{generated} ", [7], None, finish, PROMPT_TOKENS, generated)


def app_config(store_url: str, **tenant_fields: Any) -> AppConfig:
    model = {"source": {"demo": "llama"}, "pricing": PRICING, "engine": {"max_model_len": 64}}
    return AppConfig.model_validate(
        {
            "models": [{"name": "small", **model}, {"name": "large", **model}],
            "auth": {"enabled": True, "store": store_url, "key_cache_ttl_s": 0.0},
            "tenants": [
                {"name": "team-a", "models": ["small"], **tenant_fields},
                {"name": "team-b", "models": ["*"]},
            ],
        }
    )


class Platform:
    """A Router app on a free port, its gate, and a helper to mint keys."""

    def __init__(
        self, config: AppConfig, model: FakeModel, clock: list[float] | None = None, keepalive_interval_s: float = 5.0
    ) -> None:
        access = TenantAccess.from_config(config)
        assert access is not None
        self.store: TenantStore = open_store(config.auth.store)
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(PrometheusBackend(self.registry))
        self.gate = TenantGate(
            access,
            self.store,
            clock=(lambda: clock[0]) if clock else time.time,
            on_settle=self.metrics.tenant_settled,
        )
        self.model = model
        cards = [ModelCard(m.name, "demo:llama", 0) for m in config.models]
        models = {m.name: model for m in config.models}
        self.app: FastAPI = build_openai_app(
            models, cards, gate=self.gate, keepalive_interval_s=keepalive_interval_s, metrics=self.metrics
        )
        add_admin_routes(self.app, self.gate, ADMIN_KEY, "SWITCHYARD_ADMIN_KEY")
        self.loop = asyncio.new_event_loop()
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def key(self, tenant: str, expires_in_s: float | None = None) -> str:
        key, _ = self.run(
            create_key(
                self.store,
                tenant,
                known_tenants=None,
                description="test",
                expires_in_s=expires_in_s,
                now=self.gate.clock(),
            )
        )
        return key.key

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def client(self, key: str, max_retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=max_retries)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples with these labels in the Router's metrics."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
        )

    def usage(self, key: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def running(
    config: AppConfig,
    model: FakeModel | None = None,
    clock: list[float] | None = None,
    keepalive_interval_s: float = 5.0,
) -> Iterator[Platform]:
    platform = Platform(config, model or FakeModel(), clock, keepalive_interval_s)
    server = uvicorn.Server(uvicorn.Config(platform.app, host="127.0.0.1", port=platform.port, log_level="warning"))
    thread = threading.Thread(target=platform.loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield platform
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        platform.loop.run_until_complete(platform.store.close())
        platform.loop.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tenants.db'}"


def complete(client: openai.OpenAI, model: str = "small", max_tokens: int = 4, prompt: Any = "hi") -> Any:
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens)


# ----- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["not-a-key", "sy-aaaaaaaaaa-" + "A" * 43])
def test_a_malformed_or_unknown_key_is_401_invalid_api_key(sqlite_url: str, key: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        with pytest.raises(openai.AuthenticationError) as raised:
            complete(platform.client(key))
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"
        assert raised.value.response.headers["www-authenticate"] == "Bearer"
        assert platform.model.requests == []  # refused before any engine work
        assert platform.metric("switchyard_router_rejections_total", reason="bad_key", tenant="anonymous") == 1


def test_a_request_without_a_key_is_401_before_its_body_is_read(sqlite_url: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        response = httpx.post(f"{platform.base_url}/v1/completions", content=b"not even json")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_a_key_works_until_it_expires_or_is_revoked(sqlite_url: str) -> None:
    clock = [1_000_000.0]
    with running(app_config(sqlite_url), clock=clock) as platform:
        expiring, revoked = platform.key("team-a", expires_in_s=60), platform.key("team-a")
        assert complete(platform.client(expiring)).choices[0].text
        assert complete(platform.client(revoked)).choices[0].text
        clock[0] += 61
        with pytest.raises(openai.AuthenticationError, match="expired"):
            complete(platform.client(expiring))
        key_id = revoked.split("-")[1]
        response = httpx.delete(
            f"{platform.base_url}/admin/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert response.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            complete(platform.client(revoked))


def test_a_key_of_a_tenant_not_in_the_config_is_refused(sqlite_url: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        with pytest.raises(openai.AuthenticationError, match="no tenant"):
            complete(platform.client(platform.key("team-gone")))


# ----- models ------------------------------------------------------------------------------------


def test_a_model_the_tenant_may_not_use_is_404_exactly_like_a_missing_one(sqlite_url: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        client = platform.client(platform.key("team-a"))
        errors = []
        for model in ("large", "absent"):
            with pytest.raises(openai.NotFoundError) as raised:
                complete(client, model=model)
            errors.append(raised.value.body)
        assert errors[0]["code"] == errors[1]["code"] == "model_not_found"
        assert errors[0]["message"].replace("large", "X") == errors[1]["message"].replace("absent", "X")
        assert "large" not in errors[1]["message"]  # the models listed are the tenant's own
        assert [model.id for model in client.models.list()] == ["small"]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("large")
        assert [model.id for model in platform.client(platform.key("team-b")).models.list()] == ["small", "large"]


def test_requests_carry_the_tenant_and_its_weight_to_the_model(sqlite_url: str) -> None:
    with running(app_config(sqlite_url, weight=3.0)) as platform:
        complete(platform.client(platform.key("team-a")))
        assert (platform.model.requests[0].tenant, platform.model.requests[0].tenant_weight) == ("team-a", 3.0)


# ----- limits ------------------------------------------------------------------------------------


def test_requests_per_minute_answer_429_with_retry_after_and_the_ratelimit_headers(sqlite_url: str) -> None:
    clock = [6_000_000.0 + 10]  # 10 s into a window: it resets in 50 s
    with running(app_config(sqlite_url, requests_per_minute=2), clock=clock) as platform:
        client = platform.client(platform.key("team-a"))
        first = client.completions.with_raw_response.create(model="small", prompt="hi", max_tokens=2)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"] == "50s"
        complete(client)
        with pytest.raises(openai.RateLimitError) as raised:
            complete(client)
        assert raised.value.code == "rate_limit_exceeded"
        assert raised.value.response.headers["retry-after"] == "50"
        assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        clock[0] += 50  # the next window
        assert complete(client).choices[0].text
        rejected = platform.metric("switchyard_router_rejections_total", tenant="team-a", reason="rate_limited")
        assert rejected == 1


def test_tokens_per_minute_count_the_worst_case_then_what_was_used(sqlite_url: str) -> None:
    clock = [6_000_000.0]
    with running(app_config(sqlite_url, tokens_per_minute=50), clock=clock) as platform:
        key = platform.key("team-a")
        client = platform.client(key)
        with pytest.raises(openai.RateLimitError, match="more than tenant") as raised:
            # A text prompt's bound (2 bytes + the template allowance) fills max_model_len (64
            # tokens), more than the whole limit: retrying cannot help.
            complete(client, prompt="hi")
        assert "retry-after" not in raised.value.response.headers
        assert raised.value.body["type"] == "tokens"
        response = client.completions.with_raw_response.create(model="small", prompt=[1, 2, 3], max_tokens=4)
        # Admission counted the worst case (3 prompt + 4 output tokens); the usage was 5 + 4.
        assert response.headers["x-ratelimit-remaining-tokens"] == str(50 - 7)
        assert platform.usage(key)["limits"]["tokens_per_minute"]["remaining"] == 50 - 9


def test_max_concurrent_requests_refuses_the_one_too_many(sqlite_url: str) -> None:
    with running(app_config(sqlite_url, max_concurrent_requests=2), FakeModel(delay_s=0.2)) as platform:
        key = platform.key("team-a")

        async def three_at_once() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=key, max_retries=0)
            calls = [client.completions.create(model="small", prompt="hi", max_tokens=3) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(three_at_once())
        refused = [outcome for outcome in outcomes if isinstance(outcome, openai.RateLimitError)]
        assert len(refused) == 1 and len(outcomes) - len(refused) == 2, outcomes
        assert refused[0].response.headers["retry-after"] == "1"


def test_a_spent_budget_is_429_insufficient_quota_and_the_client_does_not_retry(sqlite_url: str) -> None:
    # 5 prompt tokens + 4 generated = 5 + 8 micro-USD = 13e-6 USD; the budget fits one request.
    budget = {"amount_usd": 20e-6}
    with running(app_config(sqlite_url, budget=budget)) as platform:
        client = platform.client(platform.key("team-a"), max_retries=3)
        complete(client, prompt=[1, 2, 3, 4, 5])
        with pytest.raises(openai.RateLimitError) as raised:
            complete(client, prompt=[1, 2, 3, 4, 5])
        assert raised.value.code == "insufficient_quota"
        assert raised.value.body["type"] == "insufficient_quota"
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert len(platform.model.requests) == 1  # one admitted, and the SDK did not retry the refusal
        assert platform.metric("switchyard_router_rejections_total", tenant="team-a", reason="over_budget") == 1


# ----- accounting --------------------------------------------------------------------------------


def test_the_usage_clients_received_sums_to_the_stored_spend_exactly(sqlite_url: str) -> None:
    with running(app_config(sqlite_url), FakeModel(delay_s=0.01)) as platform:
        key = platform.key("team-a")

        async def many() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=key, max_retries=0)
            calls = [
                client.completions.create(model="small", prompt="hi", max_tokens=1 + i % 5, n=1 + i % 2)
                for i in range(24)
            ]
            return await asyncio.gather(*calls)

        responses = asyncio.run(many())
        usage = platform.usage(key)
        [small] = usage["models"]
        prompt = sum(response.usage.prompt_tokens for response in responses)
        completion = sum(response.usage.completion_tokens for response in responses)
        assert (small["requests"], small["prompt_tokens"], small["completion_tokens"]) == (24, prompt, completion)
        assert small["spend_pico_usd"] == prompt * 10**6 + completion * 2 * 10**6
        # The Router's metrics say the same, per tenant.
        tokens = "switchyard_tenant_tokens_total"
        assert platform.metric(tokens, tenant="team-a", model="small", kind="prompt") == prompt
        assert platform.metric(tokens, tenant="team-a", model="small", kind="completion") == completion
        spend = platform.metric("switchyard_tenant_spend_usd_total", tenant="team-a", model="small")
        assert spend == pytest.approx(small["spend_usd"])
        assert platform.metric("switchyard_router_requests_total", tenant="team-a", status_code="200") == 24


def test_a_batch_of_prompts_is_one_request_whose_usage_is_settled_whole(sqlite_url: str) -> None:
    with running(app_config(sqlite_url, requests_per_minute=1)) as platform:
        key = platform.key("team-a")
        response = platform.client(key).completions.create(model="small", prompt=["a", "bb", "ccc"], max_tokens=3, n=2)
        assert [choice.index for choice in response.choices] == list(range(6))
        [small] = platform.usage(key)["models"]
        assert small["requests"] == 1  # and the tenant's one request per minute admitted all three prompts
        assert (small["prompt_tokens"], small["completion_tokens"]) == (
            response.usage.prompt_tokens,
            response.usage.completion_tokens,
        )
        assert response.usage.completion_tokens == 3 * 2 * 3


def test_twenty_concurrent_requests_never_spend_more_than_the_budget(sqlite_url: str) -> None:
    # Each request: 5 prompt + 10 generated tokens = 25 micro-USD; its worst case (the prompt's
    # bound: 2 bytes + the template allowance) is more, so fewer than 5 are admitted at once.
    budget_usd = 5 * 25e-6
    with running(app_config(sqlite_url, budget={"amount_usd": budget_usd}), FakeModel(delay_s=0.01)) as platform:
        key = platform.key("team-a")

        async def twenty() -> list[Any]:
            client = openai.AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=key, max_retries=0)
            calls = [client.completions.create(model="small", prompt="hi", max_tokens=10) for _ in range(20)]
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(twenty())
        assert all(isinstance(o, openai.RateLimitError) or o.choices for o in outcomes), outcomes
        usage = platform.usage(key)
        assert 0 < usage["models"][0]["spend_pico_usd"] <= round(budget_usd * 1e12)
        assert usage["limits"]["budget"]["reserved_usd"] == 0


def test_an_aborted_stream_pays_only_for_the_tokens_it_was_sent(sqlite_url: str) -> None:
    with running(app_config(sqlite_url), FakeModel(delay_s=0.05)) as platform:
        key = platform.key("team-a")
        stream = platform.client(key).completions.create(model="small", prompt="hi", max_tokens=40, stream=True)
        received = 0
        for _ in stream:
            received += 1
            if received == 3:
                break
        stream.close()
        deadline = time.monotonic() + 10
        while not (models := platform.usage(key)["models"]):
            assert time.monotonic() < deadline, "the aborted stream was never settled"
            time.sleep(0.05)
        assert models[0]["prompt_tokens"] == PROMPT_TOKENS
        assert 3 <= models[0]["completion_tokens"] < 40


def test_spend_survives_a_router_restart(sqlite_url: str) -> None:
    config = app_config(sqlite_url)
    with running(config) as platform:
        key = platform.key("team-a")
        complete(platform.client(key))
        before = platform.usage(key)["models"]
    with running(config) as platform:
        assert platform.usage(key)["models"] == before


# ----- admin API ---------------------------------------------------------------------------------


def test_the_admin_api_creates_lists_and_revokes_keys_behind_the_admin_key(sqlite_url: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        admin = httpx.Client(base_url=platform.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        created = admin.post("/admin/keys", json={"tenant": "team-b", "description": "ci"})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        assert complete(platform.client(key), model="large").choices[0].text
        [listed] = admin.get("/admin/keys", params={"tenant": "team-b"}).json()["data"]
        assert listed["key_id"] == created.json()["key_id"] and "key" not in listed and "key_hash" not in listed
        assert admin.post("/admin/keys", json={"tenant": "nobody"}).status_code == 400
        assert admin.delete(f"/admin/keys/{listed['key_id']}").json()["status"] == "revoked"
        assert admin.delete("/admin/keys/nosuchkey0").status_code == 404
        [team_b] = admin.get("/admin/usage", params={"tenant": "team-b"}).json()["data"]
        assert team_b["models"][0]["requests"] == 1
        for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(f"{platform.base_url}/admin/keys", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_usage_needs_a_key(sqlite_url: str) -> None:
    with running(app_config(sqlite_url)) as platform:
        assert httpx.get(f"{platform.base_url}/v1/usage").status_code == 401


def test_a_stream_left_before_its_first_token_is_settled_and_frees_its_slot(sqlite_url: str) -> None:
    model = FakeModel(first_delay_s=1.0)
    config = app_config(sqlite_url, max_concurrent_requests=1)
    with running(config, model, keepalive_interval_s=0.05) as platform:
        key = platform.key("team-a")
        body = {"model": "small", "prompt": "hi", "max_tokens": 4, "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream("POST", f"{platform.base_url}/v1/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert next(response.iter_text())  # a keep-alive comment: no token yet; then leave
        deadline = time.monotonic() + 10
        while (usage := platform.usage(key))["limits"]["max_concurrent_requests"]["in_flight"]:
            assert time.monotonic() < deadline, "the abandoned stream still holds its slot"
            time.sleep(0.05)
        assert usage["models"][0]["requests"] == 1 and usage["models"][0]["completion_tokens"] == 0
        assert complete(platform.client(key)).choices[0].text  # the one slot is free again


def test_a_store_that_is_down_answers_503_on_every_route(redis_server: Any) -> None:
    with running(app_config(redis_server.url)) as platform:
        key = platform.key("team-b")
        redis_server.kill()
        for method, path in (("GET", "/v1/models"), ("GET", "/v1/usage"), ("POST", "/v1/completions")):
            response = httpx.request(
                method,
                f"{platform.base_url}{path}",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "small", "prompt": "hi"},
                timeout=30,
            )
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "store_unavailable"
            assert response.headers["retry-after"] == "1"
