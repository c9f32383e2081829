"""A batch of prompts as one stream: each prompt's request streamed from the model at once, their
chunks merged as they come."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from deployments.generation import GenerationChunk, GenerationRequest

if TYPE_CHECKING:
    from deployments.ingress.openai_app import ModelClient

__all__ = ["stream_all"]


def stream_all(client: ModelClient, generations: list[GenerationRequest]) -> AsyncGenerator[GenerationChunk, None]:
    """The chunks of every prompt's request: a batch's merged as they come, each chunk's index
    moved to prompt position x n + its choice. Closing it closes every prompt's stream."""
    # Every prompt's stream is opened here, before any runs: a refusal (admission's 429) is raised
    # to the caller for the whole request, and the streams opened before it, never started, are
    # dropped (no replica was called; admission counts them no more once collected).
    streams = [client.stream(generation) for generation in generations]
    if len(generations) == 1:
        return streams[0]
    return _merged_streams(generations, streams)


async def _merged_streams(
    generations: list[GenerationRequest], streams: list[AsyncGenerator[GenerationChunk, None]]
) -> AsyncGenerator[GenerationChunk, None]:
    queue: asyncio.Queue[GenerationChunk | Exception | None] = asyncio.Queue()

    async def pump(position: int, generation: GenerationRequest, chunks: AsyncGenerator[GenerationChunk, None]) -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(dataclasses.replace(chunk, index=position * generation.n + chunk.index))
        except Exception as error:  # noqa: BLE001 - raised by the consumer
            queue.put_nowait(error)
        finally:
            await chunks.aclose()  # even when cancelled: the replica's request must be cancelled too
            queue.put_nowait(None)

    pumps = [
        asyncio.create_task(pump(position, generation, chunks))
        for position, (generation, chunks) in enumerate(zip(generations, streams, strict=True))
    ]
    try:
        num_running = len(pumps)
        while num_running:
            item = await queue.get()
            if item is None:
                num_running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
