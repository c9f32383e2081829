"""AsyncLLMEngine: streaming deltas, cancellation, concurrency and failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine import (
    AsyncLLMEngine,
    EngineConfig,
    EngineDeadError,
    EngineStoppedError,
    LLMEngine,
    RequestOutput,
    SamplingParams,
)

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def sync_engine(llama_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64, block_size=8))


async def collect(
    engine: AsyncLLMEngine, request_id: str, prompt: list[int] | str, params: SamplingParams
) -> list[RequestOutput]:
    return [output async for output in engine.generate(request_id, prompt, params)]


async def wait_until_idle(engine: AsyncLLMEngine, deadline_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    while (await engine.stats()).kv_blocks_used > 0:
        assert loop.time() < give_up, "engine did not free its blocks in time"
        await asyncio.sleep(0.01)


def test_streamed_deltas_add_up_to_the_offline_output(sync_engine: LLMEngine) -> None:
    expected = sync_engine.generate([[5, 6, 7]], GREEDY)[0]

    async def scenario() -> list[RequestOutput]:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            return await collect(engine, "a", [5, 6, 7], GREEDY)
        finally:
            await engine.shutdown()

    deltas = asyncio.run(scenario())
    assert [t for d in deltas for t in d.new_token_ids] == expected.token_ids
    assert "".join(d.delta_text for d in deltas) == expected.text
    assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])


def test_concurrent_requests_all_complete_with_their_own_tokens(sync_engine: LLMEngine) -> None:
    prompts = [[10 + i, 20 + i, 30 + i] for i in range(8)]
    expected = [o.token_ids for o in sync_engine.generate(prompts, GREEDY)]

    async def scenario() -> list[list[int]]:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            results = await asyncio.gather(*(collect(engine, f"c{i}", p, GREEDY) for i, p in enumerate(prompts)))
            return [r[-1].token_ids for r in results]
        finally:
            await engine.shutdown()

    assert asyncio.run(scenario()) == expected


def test_cancelling_a_stream_aborts_and_frees_its_blocks(sync_engine: LLMEngine) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            long = SamplingParams(max_tokens=200, ignore_eos=True)
            stream = engine.generate("cancel-me", [1, 2, 3] * 10, long)
            await stream.__anext__()
            assert (await engine.stats()).kv_blocks_used > 0
            await stream.aclose()
            await wait_until_idle(engine)
            stats = await engine.stats()
            assert (stats.num_running, stats.num_waiting) == (0, 0)
            # The engine keeps serving after the abort.
            assert (await collect(engine, "after", [4, 5], GREEDY))[-1].finished
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_bad_input_raises_before_any_output(sync_engine: LLMEngine) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            with pytest.raises(ValueError, match="prompt"):
                await collect(engine, "bad", [], GREEDY)
            assert (await collect(engine, "good", [4, 5], GREEDY))[-1].finished
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_failing_step_ends_requests_with_engine_dead_error(llama_dir: Path) -> None:
    broken = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=16))

    def fail(batch: object) -> None:
        raise RuntimeError("device lost")

    broken.executor.execute = fail  # type: ignore[method-assign]

    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(broken)
        await engine.start()
        try:
            with pytest.raises(EngineDeadError):
                await collect(engine, "x", [1, 2, 3], GREEDY)
            with pytest.raises(EngineDeadError):
                await engine.check_health()
            with pytest.raises(EngineDeadError):
                await collect(engine, "y", [1, 2, 3], GREEDY)
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_start_loads_the_model_and_reports_health(llama_dir: Path) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=16))
        with pytest.raises(EngineStoppedError):
            await engine.check_health()
        await engine.start(timeout_s=120)
        try:
            await engine.check_health()
            assert engine.load_seconds is not None and engine.load_seconds > 0
            assert (await collect(engine, "z", "hi", GREEDY))[-1].finished
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_failed_load_raises_from_start_and_refuses_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine(EngineConfig(model=str(tmp_path / "no-such-model")))
        with pytest.raises(OSError):
            await engine.start(timeout_s=60)
        with pytest.raises(EngineStoppedError):
            await engine.stats()
        with pytest.raises(EngineStoppedError):
            await engine.check_health()

    asyncio.run(scenario())


def test_shutdown_ends_requests_in_flight_instead_of_leaving_them_waiting(sync_engine: LLMEngine) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        stream = engine.generate("left-running", [1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
        await anext(stream)
        await engine.shutdown()
        with pytest.raises(EngineStoppedError, match="shut down"):
            async for _ in stream:
                pass
        sync_engine.abort_request("left-running")  # the module's engine is shared by other tests

    asyncio.run(scenario())


def test_stream_interval_merges_steps_and_still_ends_at_once(sync_engine: LLMEngine) -> None:
    expected = sync_engine.generate([[7, 8, 9]], GREEDY)[0]

    async def scenario() -> tuple[list[RequestOutput], float]:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            deltas = [delta async for delta in engine.generate("slow", [7, 8, 9], GREEDY, stream_interval_s=30.0)]
            return deltas, loop.time() - started
        finally:
            await engine.shutdown()

    deltas, seconds = asyncio.run(scenario())
    # No interval until the first visible text (a slow event loop may still merge a step or two
    # there), then everything else merged into the final delta, which comes without waiting out
    # the 30 s.
    *head, last = deltas
    assert head[-1].delta_text and not any(delta.delta_text for delta in head[:-1])
    assert len(last.new_token_ids) > 1  # the steps after the first visible text, merged
    assert [t for d in deltas for t in d.new_token_ids] == expected.token_ids
    assert "".join(d.delta_text for d in deltas) == expected.text
    assert seconds < 30.0


def test_no_stream_interval_yields_only_the_final_output(sync_engine: LLMEngine) -> None:
    expected = sync_engine.generate([[7, 8, 9]], GREEDY)[0]

    async def scenario() -> list[RequestOutput]:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            return [delta async for delta in engine.generate("whole", [7, 8, 9], GREEDY, stream_interval_s=None)]
        finally:
            await engine.shutdown()

    (only,) = asyncio.run(scenario())
    assert only.finished
    assert only.new_token_ids == only.token_ids == expected.token_ids
    assert only.delta_text == only.text == expected.text


def test_the_started_engine_exposes_its_tokenizer_and_context_limit(sync_engine: LLMEngine) -> None:
    async def scenario() -> tuple[object, int]:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            return engine.tokenizer, engine.context_limit
        finally:
            await engine.shutdown()

    tokenizer, context_limit = asyncio.run(scenario())
    assert tokenizer is sync_engine.tokenizer
    assert context_limit == sync_engine.context_limit


def test_cancelling_a_request_whose_add_is_still_queued_keeps_the_engine_serving(sync_engine: LLMEngine) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(sync_engine)
        await engine.start()
        try:
            busy = SamplingParams(max_tokens=400, ignore_eos=True)
            stream = engine.generate("busy", [1, 2, 3], busy)
            await anext(stream)  # the engine is now stepping: new commands wait for a step's end
            adding = asyncio.create_task(anext(engine.generate("cancelled", [4, 5, 6], busy)))
            await asyncio.sleep(0)  # its add_request is queued
            adding.cancel()
            await asyncio.gather(adding, return_exceptions=True)
            await stream.aclose()
            await wait_until_idle(engine)
            await engine.check_health()
            assert (await collect(engine, "after", [4, 5], GREEDY))[-1].finished
            stats = await engine.stats()
            assert (stats.num_running, stats.num_waiting) == (0, 0)
        finally:
            await engine.shutdown()

    asyncio.run(scenario())


def test_shutdown_of_an_idle_engine_returns(sync_engine: LLMEngine) -> None:
    async def scenario() -> None:
        for _ in range(20):  # a stop racing the idle wait must still wake the thread
            engine = AsyncLLMEngine.from_engine(sync_engine)
            await engine.start()
            await asyncio.wait_for(engine.shutdown(), timeout=10)

    asyncio.run(scenario())
