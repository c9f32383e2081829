"""AsyncLLMEngine with its model in a child process (EngineProcess): the same outputs as in process,
aborts that free blocks, errors that come back raised, and a dead child that ends its streams."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from engine import (
    AsyncLLMEngine,
    EngineConfig,
    EngineDeadError,
    InvalidPromptError,
    LLMEngine,
    RequestOutput,
    SamplingParams,
)
from engine.core.engine_process import EngineProcess

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2)


def config(model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(model_dir), dtype="float32", num_kv_blocks=64, block_size=8)


@asynccontextmanager
async def process_engine(model_dir: Path) -> AsyncIterator[AsyncLLMEngine]:
    engine = AsyncLLMEngine(config(model_dir), engine_process=True, num_threads=1)
    await engine.start(timeout_s=120)
    try:
        yield engine
    finally:
        await engine.shutdown()


def child_of(engine: AsyncLLMEngine) -> EngineProcess:
    assert isinstance(engine.engine, EngineProcess)
    return engine.engine


async def collect(engine: AsyncLLMEngine, request_id: str, prompt: list[int] | str) -> list[RequestOutput]:
    return [output async for output in engine.generate(request_id, prompt, GREEDY)]


def test_outputs_match_the_engine_in_process(llama_dir: Path) -> None:
    prompts: list[list[int] | str] = [[5, 6, 7], [9, 8, 7, 6, 5, 4], "hello there"]
    expected = LLMEngine(config(llama_dir)).generate(prompts, GREEDY)

    async def scenario() -> tuple[list[list[RequestOutput]], int]:
        async with process_engine(llama_dir) as engine:
            streams = await asyncio.gather(*(collect(engine, f"r{i}", p) for i, p in enumerate(prompts)))
            return streams, (await engine.stats()).kv_blocks_used

    streams, blocks_used = asyncio.run(scenario())
    for deltas, offline in zip(streams, expected, strict=True):
        final = deltas[-1]
        assert [t for d in deltas for t in d.new_token_ids] == final.token_ids == offline.token_ids
        assert final.logprobs == pytest.approx(offline.logprobs, abs=1e-5)
        top_ids = [[token_id for token_id, _ in top] for top in final.top_logprobs]
        assert top_ids == [[token_id for token_id, _ in top] for top in offline.top_logprobs]
        assert final.text == offline.text and final.prompt_token_ids == offline.prompt_token_ids
        assert final.finish_reason == "length"
    assert blocks_used == 0


def test_a_refused_prompt_raises_its_error_and_the_engine_keeps_serving(llama_dir: Path) -> None:
    async def scenario() -> list[RequestOutput]:
        async with process_engine(llama_dir) as engine:
            with pytest.raises(InvalidPromptError, match="prompt token ids must be integers"):
                await collect(engine, "bad", [10**9])
            return await collect(engine, "good", [5, 6, 7])

    assert len(asyncio.run(scenario())[-1].token_ids) == GREEDY.max_tokens


def test_cancelling_a_stream_aborts_it_in_the_child_and_frees_its_blocks(llama_dir: Path) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def scenario() -> int:
        async with process_engine(llama_dir) as engine:
            stream = engine.generate("long", [5, 6, 7], long)
            await anext(stream)
            await stream.aclose()
            loop = asyncio.get_running_loop()
            give_up = loop.time() + 10
            while (used := (await engine.stats()).kv_blocks_used) and loop.time() < give_up:
                await asyncio.sleep(0.01)
            return used

    assert asyncio.run(scenario()) == 0


def test_a_killed_child_ends_streams_with_engine_dead_error_and_fails_health(llama_dir: Path) -> None:
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def scenario() -> None:
        async with process_engine(llama_dir) as engine:
            stream = engine.generate("doomed", [5, 6, 7], long)
            await anext(stream)
            os.kill(child_of(engine)._process.pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError):
                async for _ in stream:
                    pass
            with pytest.raises(EngineDeadError):
                await engine.check_health()

    asyncio.run(scenario())


def test_shutdown_stops_the_child(llama_dir: Path) -> None:
    async def scenario() -> EngineProcess:
        async with process_engine(llama_dir) as engine:
            await engine.check_health()
            return child_of(engine)

    assert asyncio.run(scenario())._process.returncode == 0


def test_a_model_that_fails_to_load_raises_from_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine(EngineConfig(model=str(tmp_path / "no-such-model")), engine_process=True)
        await engine.start(timeout_s=120)

    with pytest.raises(OSError):
        asyncio.run(scenario())


def test_commands_sent_together_are_all_run_before_the_next_step(llama_dir: Path) -> None:
    """A static batch shows it: a request admitted after the first step would start only once the
    others finished."""
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    static = EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64, block_size=8, scheduling="static")
    engine = EngineProcess(static, num_threads=1)
    try:
        outcomes = engine.run_commands([("add_request", (f"s{i}", [5 + i, 6, 7], params)) for i in range(4)])
        assert outcomes == [(True, None)] * 4
        finals: dict[str, RequestOutput] = {}
        while engine.has_unfinished_requests():
            finals.update((output.request_id, output) for output in engine.step() if output.finished)
    finally:
        engine.close()
    assert len(finals) == 4
    assert max(final.timing.first_token for final in finals.values()) < min(
        final.timing.finish for final in finals.values()
    )


def test_a_request_id_used_again_after_an_abort_gets_only_its_own_tokens(llama_dir: Path) -> None:
    expected = LLMEngine(config(llama_dir)).generate([[40, 41, 42]], GREEDY)[0].token_ids
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def scenario() -> list[int]:
        async with process_engine(llama_dir) as engine:
            first = engine.generate("same", [5, 6, 7], long)
            await anext(first)
            await first.aclose()
            return (await collect(engine, "same", [40, 41, 42]))[-1].token_ids

    assert asyncio.run(scenario()) == expected


def test_a_child_found_dead_between_steps_ends_the_engine(llama_dir: Path) -> None:
    async def scenario() -> None:
        async with process_engine(llama_dir) as engine:
            child = child_of(engine)._process
            child.kill()
            child.wait()
            with pytest.raises(EngineDeadError):
                await engine.stats()
            with pytest.raises(EngineDeadError):
                await collect(engine, "late", [5, 6, 7])
            with pytest.raises(EngineDeadError):
                await engine.check_health()

    asyncio.run(scenario())


def test_an_add_and_an_abort_of_one_request_in_one_message_leave_nothing_running(llama_dir: Path) -> None:
    engine = EngineProcess(config(llama_dir), num_threads=1)
    try:
        outcomes = engine.run_commands([("add_request", ("x", [5, 6, 7], GREEDY)), ("abort_request", ("x",))])
        assert outcomes == [(True, None), (True, True)]
        assert not engine.has_unfinished_requests()
        assert engine.stats().kv_blocks_used == 0
    finally:
        engine.close()


def test_outputs_received_during_a_commands_reply_are_still_stepped_out(llama_dir: Path) -> None:
    # The last request finishes in a step whose outputs arrive while a later command (a stats
    # call) awaits its reply: the engine must still count as unfinished until `step` hands them over.
    engine = EngineProcess(config(llama_dir), num_threads=1)
    try:
        engine.run_commands([("add_request", ("x", [5, 6, 7], SamplingParams(max_tokens=1)))])
        deadline = time.monotonic() + 60
        while not engine._conn.poll():  # the child has sent the finishing step's outputs
            assert time.monotonic() < deadline
            time.sleep(0.01)
        engine.stats()  # takes those outputs in while awaiting its reply
        assert engine.has_unfinished_requests()
        [output] = engine.step()
        assert output.request_id == "x" and output.finished
        assert not engine.has_unfinished_requests()
    finally:
        engine.close()
