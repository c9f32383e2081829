"""Switchyard's LLM engine: continuous batching over a paged KV cache with prefix caching.

engine = LLMEngine(EngineConfig(model="path/or/hub-id"))
outputs = engine.generate(["Hello"], SamplingParams(max_tokens=32, temperature=0))
"""

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.errors import ContextLengthError, EngineDeadError, EngineError, EngineStoppedError
from engine.executor import ShardInfo
from engine.llm_engine import LLMEngine
from engine.outputs import EngineStats, RequestOutput, RequestTiming
from engine.sampling_params import SamplingParams

__all__ = [
    "AsyncLLMEngine",
    "ContextLengthError",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineStats",
    "EngineStoppedError",
    "LLMEngine",
    "RequestOutput",
    "RequestTiming",
    "SamplingParams",
    "ShardInfo",
]
