"""LLMServer over a fake engine (its factory is the seam): what the replica does with what the
engine says, with no weights loaded."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from autoscaling import LoadSignals
from deployments.config import ModelConfig
from deployments.errors import ApiError, InvalidRequestError
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.replica.llm_server import LLMServer
from engine import (
    DEFAULT_TENANT,
    EngineConfig,
    EngineStats,
    InvalidPromptError,
    RequestOutput,
    RequestTiming,
    SamplingParams,
    ShardInfo,
)


class FakeEngine:
    """Answers every request with `num_tokens` tokens (ids 5, 6, ...), or raises `error`."""

    def __init__(self, config: EngineConfig, num_tokens: int = 3, error: Exception | None = None) -> None:
        self.config = config
        self.num_tokens = num_tokens
        self.error = error
        self.load_seconds: float | None = None
        self.intervals: list[float | None] = []
        # The (tenant, tenant_weight) of each request, in arrival order.
        self.tenants: list[tuple[str, float]] = []
        self.num_waiting = 0
        self.num_running = 0

    tokenizer = None
    context_limit = 64

    async def start(self, timeout_s: float | None = None) -> None:
        self.load_seconds = 0.0

    async def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        stream_interval_s: float | None = 0.0,
        *,
        tenant: str = DEFAULT_TENANT,
        tenant_weight: float = 1.0,
    ) -> AsyncIterator[RequestOutput]:
        self.intervals.append(stream_interval_s)
        self.tenants.append((tenant, tenant_weight))
        if self.error is not None:
            raise self.error
        assert isinstance(prompt, list)
        for index in range(self.num_tokens):
            yield RequestOutput(
                request_id=request_id,
                prompt_token_ids=prompt,
                new_token_ids=[5 + index],
                new_logprobs=[],
                new_top_logprobs=[],
                delta_text="",
                finish_reason="length" if index == self.num_tokens - 1 else None,
                timing=RequestTiming(arrival=0.0),
                num_generated_tokens=index + 1,
            )

    async def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_preemptions=0,
            kv_blocks_total=8,
            kv_blocks_used=2,
            kv_tokens_stored=20,
            block_size=16,
            prefix_cache_queried_tokens=0,
            prefix_cache_hit_tokens=0,
            num_prompt_tokens_computed=0,
            num_generation_tokens=0,
        )

    async def shards(self) -> list[ShardInfo]:
        return [ShardInfo(0, node_id=None, device="cpu", weight_bytes=1, pid=1)]

    async def check_health(self) -> None:
        """Always healthy."""

    def close(self) -> None:
        """Nothing to release."""


def start_server(engine_error: Exception | None = None) -> tuple[LLMServer, list[FakeEngine]]:
    config = ModelConfig.model_validate({"name": "fake", "source": {"path": "/nonexistent/fake-model"}})
    engines: list[FakeEngine] = []

    def factory(engine_config: EngineConfig, model: ModelConfig) -> FakeEngine:
        assert model is config
        engines.append(FakeEngine(engine_config, error=engine_error))
        return engines[-1]

    server = object.__new__(LLMServer)  # Serve constructs replicas the same way: async __init__
    asyncio.run(server.__init__(config, engine_factory=factory))
    return server, engines


def request(stream: bool = True, n: int = 1) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        prompt=[1, 2, 3],
        messages=None,
        params=SamplingParams(temperature=0.0),
        max_tokens=3,
        n=n,
        stream=stream,
    )


async def collect(stream: AsyncIterator[GenerationChunk | ApiError]) -> list[GenerationChunk | ApiError]:
    return [item async for item in stream]


def test_the_factory_gets_the_engine_config_of_the_model_source() -> None:
    _, engines = start_server()
    assert engines[0].config.model == "/nonexistent/fake-model"


def test_a_refused_prompt_ends_the_stream_with_a_bad_request_value() -> None:
    server, _ = start_server(InvalidPromptError("prompt token ids must be integers in [0, 10), got 99"))
    items = asyncio.run(collect(server.generate(request())))
    assert len(items) == 1 and type(items[0]) is InvalidRequestError
    assert "got 99" in items[0].message


def test_any_other_value_error_from_the_engine_is_not_a_bad_request() -> None:
    # A ValueError that is not the engine refusing the prompt is a bug: it must surface (a 500
    # at the Router), not be blamed on the client as a 400.
    server, _ = start_server(ValueError("request_id must be unique"))
    with pytest.raises(ValueError, match="must be unique"):
        asyncio.run(collect(server.generate(request())))


def test_a_whole_choice_asks_the_engine_for_its_final_output_only() -> None:
    server, engines = start_server()
    items = asyncio.run(collect(server.generate(request(stream=False))))
    assert engines[0].intervals == [None]
    (choice,) = items
    assert isinstance(choice, GenerationChunk) and choice.token_ids == [5, 6, 7]
    assert choice.num_generated_tokens == 3


def test_a_streamed_choice_asks_for_news_once_per_stream_interval() -> None:
    server, engines = start_server()
    asyncio.run(collect(server.generate(request(stream=True))))
    assert engines[0].intervals == [0.1]  # stream_interval_ms defaults to 100


def test_every_choice_carries_the_requests_tenant_and_weight_to_the_engine() -> None:
    server, engines = start_server()
    tenant_request = dataclasses.replace(request(n=2), tenant="team-a", tenant_weight=2.5)
    asyncio.run(collect(server.generate(tenant_request)))
    assert engines[0].tenants == [("team-a", 2.5), ("team-a", 2.5)]


def test_load_signals_reach_serve_as_the_named_metrics() -> None:
    server, engines = start_server()
    engines[0].num_waiting, engines[0].num_running = 3, 5
    metrics = asyncio.run(server.record_routing_stats())
    assert metrics.keys() == asyncio.run(server.record_autoscaling_stats()).keys()
    signals = LoadSignals.from_metrics(metrics)
    assert signals is not None and (signals.num_waiting, signals.num_running, signals.kv_usage) == (3, 5, 0.25)
    assert signals.num_sequences == 8
    assert signals.num_requests == 0  # none in flight while the stats were read


@pytest.mark.parametrize(
    ("engine", "expected"),
    [({}, True), ({"engine_process": False}, False), ({"tensor_parallel_size": 2}, False)],
)
def test_the_engine_runs_in_a_child_process_unless_off_or_sharded(engine: dict[str, object], expected: bool) -> None:
    config = ModelConfig.model_validate({"name": "m", "source": {"path": "/m"}, "engine": engine})
    assert config.uses_engine_process is expected
