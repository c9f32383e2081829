"""LLMServer without Ray: the replica class driven directly on a tiny model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from deployments.config import ModelConfig
from deployments.errors import ApiError, ContextLengthExceededError, InvalidRequestError
from deployments.generation import ChatMessage, GenerationChunk, GenerationRequest, Tokenized, TokenizeRequest
from deployments.replica.llm_server import LLMServer, describe_weights
from engine import SamplingParams, ShardInfo

T = TypeVar("T")


def run(test: Callable[[LLMServer], Awaitable[T]], llama_dir: Path, **engine: object) -> T:
    """Start a replica on `llama_dir`, run `test` against it, shut it down. The engine runs on a
    thread of the replica unless `engine_process=True` (a child process takes seconds to start;
    tests/engine/test_engine_process.py covers the process boundary)."""

    async def main() -> T:
        settings = {"num_kv_blocks": 64, "engine_process": False, **engine}
        config = ModelConfig.model_validate({"name": "tiny", "source": {"path": str(llama_dir)}, "engine": settings})
        server = object.__new__(LLMServer)  # Serve constructs replicas the same way: async __init__
        await server.__init__(config)
        try:
            return await test(server)
        finally:
            await server.engine.shutdown()

    return asyncio.run(main())


def completion(prompt: str | list[int], max_tokens: int | None = 8, **kwargs: object) -> GenerationRequest:
    params = SamplingParams(**{"temperature": 0.0, **kwargs.pop("params", {})})
    return GenerationRequest(
        request_id="r", prompt=prompt, messages=None, params=params, max_tokens=max_tokens, **kwargs
    )


async def collect(stream: AsyncIterator[GenerationChunk | ApiError]) -> list[GenerationChunk | ApiError]:
    return [item async for item in stream]


def test_non_streaming_request_yields_each_choice_once_whole(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        request = completion("hello", n=3, stream=False, params={"temperature": 1.0, "seed": 5})
        chunks = await collect(server.generate(request))
        assert sorted(chunk.index for chunk in chunks) == [0, 1, 2]
        assert all(chunk.finish_reason == "length" and len(chunk.token_ids) == 8 for chunk in chunks)
        assert len({tuple(chunk.token_ids) for chunk in chunks}) > 1  # seeded choices differ

    run(test, llama_dir)


def test_streamed_chunks_add_up_to_the_whole_choice(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        whole = await collect(server.generate(completion("hello", max_tokens=20, stream=False)))
        streamed = await collect(server.generate(completion("hello", max_tokens=20)))
        assert [token for chunk in streamed for token in chunk.token_ids] == whole[0].token_ids
        assert "".join(chunk.text for chunk in streamed) == whole[0].text
        assert streamed[-1].finish_reason == "length" and streamed[-1].num_generated_tokens == 20

    run(test, llama_dir)


def test_chat_prompt_is_the_models_chat_template(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        messages = [ChatMessage(role="user", content="hi there")]
        request = GenerationRequest(
            request_id="c", prompt=None, messages=messages, params=SamplingParams(temperature=0.0), max_tokens=4
        )
        tokenizer = server.engine.engine.tokenizer
        expected = tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi there"}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )
        chunks = await collect(server.generate(request))
        assert chunks[-1].num_prompt_tokens == len(expected)
        assert server.prompts.prompt_token_ids(request) == expected

    run(test, llama_dir)


def test_missing_max_tokens_takes_the_rest_of_the_context(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        prompt = list(range(10, 30))  # 20 tokens of a 40-token context
        chunks = await collect(
            server.generate(completion(prompt, max_tokens=None, stream=False, params={"ignore_eos": True}))
        )
        assert chunks[0].num_generated_tokens == 20

    run(test, llama_dir, max_model_len=40)


def test_missing_max_tokens_is_capped_by_a_kv_pool_smaller_than_the_context(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        prompt = list(range(10, 30))  # 20 tokens; the pool holds 4 blocks x 16 = 64 (+1 never fed back)
        request = completion(prompt, max_tokens=None, stream=False, params={"ignore_eos": True})
        chunks = await collect(server.generate(request))
        assert chunks[0].num_generated_tokens == 65 - 20

    run(test, llama_dir, num_kv_blocks=4)


@pytest.mark.parametrize(
    ("request_", "error_type", "param"),
    [
        (completion(list(range(10, 40)), max_tokens=20), ContextLengthExceededError, "prompt"),
        (completion(list(range(10, 50)), max_tokens=None), ContextLengthExceededError, "prompt"),
        (completion([1, 2, 10**6]), InvalidRequestError, None),
        # No max_tokens: the 30-token prompt leaves 10, fewer than min_tokens.
        (
            completion(list(range(10, 40)), max_tokens=None, params={"min_tokens": 12}),
            InvalidRequestError,
            "min_tokens",
        ),
        (completion([1, 2, 3], params={"logit_bias": {10**6: 1.0}}), InvalidRequestError, None),
    ],
    ids=[
        "prompt_plus_max_tokens",
        "prompt_fills_the_context",
        "token_id_outside_vocabulary",
        "min_tokens_beyond_the_room_left",
        "logit_bias_outside_vocabulary",
    ],
)
def test_refused_request_ends_its_stream_with_an_error_value(
    llama_dir: Path, request_: GenerationRequest, error_type: type[ApiError], param: str | None
) -> None:
    async def test(server: LLMServer) -> None:
        items = await collect(server.generate(request_))
        assert len(items) == 1 and type(items[0]) is error_type and items[0].param == param
        stats = await server.stats()
        assert stats.num_running == stats.num_waiting == 0

    run(test, llama_dir, max_model_len=40)


def test_closing_the_stream_aborts_every_choice_and_frees_its_blocks(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        stream = server.generate(completion("hello", max_tokens=200, n=2, params={"ignore_eos": True}))
        await anext(stream)
        assert (await server.stats()).kv_blocks_used > 0
        await stream.aclose()
        deadline = time.monotonic() + 30
        while (stats := await server.stats()).kv_blocks_used or stats.num_running or stats.num_waiting:
            assert time.monotonic() < deadline, "closed choices kept running"
            await asyncio.sleep(0.01)  # aborts reach the engine at its next step
        assert stats.num_generation_tokens < 2 * 200

    run(test, llama_dir, engine_process=True)  # the aborts cross to the engine's process


def test_health_check_fails_once_the_engine_is_dead(llama_dir: Path) -> None:
    async def test(server: LLMServer) -> None:
        await server.check_health()
        await server.engine.shutdown()
        with pytest.raises(Exception, match="not running"):
            await server.check_health()

    run(test, llama_dir, engine_process=True)


def test_start_log_reports_weight_bytes_per_shard() -> None:
    one = [ShardInfo(0, node_id=None, device="cpu", weight_bytes=3 * 2**20, pid=1)]
    assert describe_weights(one) == "weights 3.0 MiB on cpu"
    two = [
        ShardInfo(rank, node_id=f"node{rank}abcdef", device="cuda:0", weight_bytes=2**20, pid=rank) for rank in (0, 1)
    ]
    assert describe_weights(two) == (
        "weights 2.0 MiB in 2 shards (rank 0: 1.0 MiB on cuda:0, node node0abc, "
        "rank 1: 1.0 MiB on cuda:0, node node1abc)"
    )
    stages = [
        ShardInfo(0, node_id=f"node{stage}abcdef", device="cpu", weight_bytes=2**20, pid=stage, stage=stage)
        for stage in (0, 1)
    ]
    assert describe_weights(stages) == (
        "weights 2.0 MiB in 2 shards (stage 0 rank 0: 1.0 MiB on cpu, node node0abc, "
        "stage 1 rank 0: 1.0 MiB on cpu, node node1abc)"
    )


def test_tokenize_and_detokenize_use_the_models_tokenizer_and_template(llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)

    async def test(server: LLMServer) -> None:
        text = "Hello, paged attention"
        result = await server.tokenize(TokenizeRequest(text, None, add_special_tokens=True, return_token_strs=True))
        assert isinstance(result, Tokenized)
        assert result.token_ids == tokenizer.encode(text) and result.max_model_len == 40
        assert result.token_strs == tokenizer.convert_ids_to_tokens(result.token_ids)
        assert await server.detokenize(result.token_ids) == tokenizer.decode(result.token_ids)
        chat = await server.tokenize(TokenizeRequest(None, [ChatMessage("user", "hi")], add_special_tokens=False))
        chat_request = GenerationRequest("c", None, [ChatMessage("user", "hi")], SamplingParams(temperature=0.0), 2)
        served = await collect(server.generate(chat_request))
        assert isinstance(chat, Tokenized) and isinstance(served[0], GenerationChunk)
        assert len(chat.token_ids) == served[0].num_prompt_tokens  # what a chat request's prompt is
        refused = await server.detokenize([10**7])
        assert isinstance(refused, InvalidRequestError) and refused.param == "tokens"

    run(test, llama_dir, max_model_len=40)


def test_echo_sends_the_prompt_decoded_whole_in_each_choices_first_chunk(llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    token_ids = AutoTokenizer.from_pretrained(llama_dir).encode("naïve café", add_special_tokens=False)

    async def test(server: LLMServer) -> None:
        request = completion(token_ids, max_tokens=0, n=2, echo=True, stream=True)
        chunks = [item for item in await collect(server.generate(request)) if isinstance(item, GenerationChunk)]
        assert sorted(chunk.prompt_text for chunk in chunks if chunk.prompt_text is not None) == ["naïve café"] * 2
        assert all(chunk.num_generated_tokens == 0 and chunk.finish_reason == "length" for chunk in chunks)

    run(test, llama_dir, max_model_len=40)
