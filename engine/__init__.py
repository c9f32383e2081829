"""Switchyard's LLM engine: continuous batching over a paged KV cache with prefix caching.

engine = LLMEngine(EngineConfig(model="path/or/hub-id"))
outputs = engine.generate(["Hello"], SamplingParams(max_tokens=32, temperature=0))

Configs, sampling params, outputs, errors and the sizing helpers import without torch (a router
or a config check holds no model); `LLMEngine` and `AsyncLLMEngine` load torch and transformers
when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.core.sequence import DEFAULT_TENANT
from engine.errors import (
    ContextLengthError,
    EngineDeadError,
    EngineError,
    EngineStoppedError,
    InvalidGrammarError,
    InvalidPromptError,
)
from engine.model.kv_cache import DTYPE_BYTES, KVCacheShape, kv_cache_shape
from engine.outputs import EngineStats, RequestOutput, RequestTiming, ShardInfo
from engine.parallel.placement import shard_bundles, tensor_parallel_problem
from engine.sampling_params import SamplingParams
from engine.structured.spec import StructuredOutput

if TYPE_CHECKING:
    from engine.core.async_engine import AsyncLLMEngine
    from engine.core.llm_engine import LLMEngine

__all__ = [
    "DEFAULT_TENANT",
    "DTYPE_BYTES",
    "AsyncLLMEngine",
    "ContextLengthError",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "InvalidGrammarError",
    "InvalidPromptError",
    "KVCacheShape",
    "LLMEngine",
    "RequestOutput",
    "RequestTiming",
    "SamplingParams",
    "ShardInfo",
    "StructuredOutput",
    "kv_cache_shape",
    "shard_bundles",
    "tensor_parallel_problem",
]

# The engines, imported on first use: they pull in torch and transformers.
_LAZY = {"AsyncLLMEngine": "engine.core.async_engine", "LLMEngine": "engine.core.llm_engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
