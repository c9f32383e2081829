"""Stand-ins for a model's LLMServer that fail on purpose, behind the real Router."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from deployments.generation import GenerationChunk, GenerationRequest
from engine import EngineDeadError


class DeadEngineServer:
    """A replica whose engine step failed: every request ends with EngineDeadError."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise EngineDeadError("engine step failed: RuntimeError at /secret/internal/path.py:42")
        yield  # an async generator, like LLMServer.generate


class CrashingServer:
    """A replica whose process dies while it serves a request."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        os._exit(1)
        yield
