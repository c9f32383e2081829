"""What an LLMServer replica needs of its engine: `engine.AsyncLLMEngine`'s public surface.

A Protocol, so replica tests can hand LLMServer a fake engine (no weights) through its factory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from engine import DEFAULT_TENANT, EngineStats, RequestOutput, SamplingParams, ShardInfo

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["EngineClient"]


class EngineClient(Protocol):
    # Seconds the engine took to load its model (None before `start`).
    load_seconds: float | None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...

    @property
    def context_limit(self) -> int: ...

    async def start(self, timeout_s: float | None = None) -> None: ...

    def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        stream_interval_s: float | None = 0.0,
        *,
        tenant: str = DEFAULT_TENANT,
        tenant_weight: float = 1.0,
    ) -> AsyncIterator[RequestOutput]: ...

    async def stats(self) -> EngineStats: ...

    async def shards(self) -> list[ShardInfo]: ...

    async def check_health(self) -> None: ...

    def close(self) -> None: ...
