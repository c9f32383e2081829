"""A shard killed under a stream: what every sharded engine must do (end the stream, fail health)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from engine import AsyncLLMEngine, EngineConfig, EngineDeadError, SamplingParams


def assert_a_killed_shard_ends_the_stream_and_fails_health(config: EngineConfig, victim: int) -> None:
    """Start a long stream, SIGKILL shard `victim` (in `shards()` order) once it streams: the stream
    ends with EngineDeadError within a minute and the health check fails."""

    async def scenario() -> None:
        engine = AsyncLLMEngine(config)
        await engine.start(timeout_s=120)
        try:
            long_run = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
            stream = engine.generate("long", [5, 6, 7], long_run)
            await anext(stream)
            os.kill((await engine.shards())[victim].pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError):
                async with asyncio.timeout(60):
                    async for _ in stream:
                        pass
            with pytest.raises(EngineDeadError):
                await engine.check_health()
        finally:
            await engine.shutdown()

    asyncio.run(scenario())
