"""The planner's figures for a tiny model are what the engine allocates for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.tools.planner import ModelDims, load_model_config, plan, weight_bytes
from engine import EngineConfig, LLMEngine


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_planned_weights_and_kv_equal_the_engines(
    tiny_model_dirs: dict[str, Path], architecture: str, dtype: str
) -> None:
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=8, block_size=16))
    runner = engine.executor.runner
    dims = ModelDims.from_config(load_model_config(str(model_dir)))
    assert weight_bytes(dims, dtype, None) == runner.weight_bytes
    result = plan(
        dims,
        dtype=dtype,
        quantization=None,
        gpu_memory_bytes=2**30,
        memory_fraction=1.0,
        context_len=40,
        concurrency=1,
    )
    assert result.kv_bytes_per_token * 16 == runner.kv_shape.bytes_per_block(16)
    # 40 tokens take 3 whole blocks of 16 in the engine.
    assert result.kv_bytes_per_sequence == 3 * runner.kv_shape.bytes_per_block(16)
