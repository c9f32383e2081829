"""Host memory a model's replica takes, from the planner's figures, for sizing its Kubernetes pods.

Each process that runs the model (the replica itself, its engine process, or each shard: a
tensor-parallel rank of a pipeline stage) takes its own footprint (Python, torch, Ray's worker; on
CUDA the CUDA context and libraries) and, on CPU, its shard's weights and its KV pool (of its
stage's layers). On CUDA the weights and the pool live
on the GPU: the loaders copy the checkpoint to the device a tensor at a time, and the page cache
its reads fill is reclaimable. The weights and KV bytes are the planner's: parameters counted on
the model's transformers class built on the meta device (a shard's on the engine's own split), the
KV pool of `num_kv_blocks` blocks, or of `max_num_seqs` full-length sequences (the most the engine
takes when it sizes the pool from memory; set `num_kv_blocks` or `max_model_len` for a smaller
pod).

`dtype: auto` is sized as float32 (what it resolves to on a CPU without AMX or AVX-512-BF16). A
CPU model's dimensions come from its demo spec, its `path` directory, the hub's
config.json (the cache, or the network) for a `hub_id`, or what `switchyard plan --model` takes
(a built-in name, a config.json, a model directory) given per model.

torch and transformers are imported here, through the planner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig

from deployments.config import ModelConfig
from deployments.replica.model_source import demo_spec
from deployments.tools.planner import ModelDims, load_model_config, shard_weight_bytes, weight_bytes
from engine import DTYPE_BYTES, KVCacheShape
from engine.demo.tiny_models import tiny_model_config
from engine.parallel.stages import pipeline_stages

__all__ = ["replica_memory_bytes"]

_GIB = 2**30
# A process's own resident memory besides weights and KV: Python, torch and Ray's worker, and on
# CUDA the context and kernels' libraries.
_PROCESS_BYTES = {"cpu": 1 * _GIB, "cuda": 3 * _GIB}
# The replica's server process when the engine runs elsewhere (its engine process or its shards).
_SERVER_BYTES = 1 * _GIB


def replica_memory_bytes(model: ModelConfig, model_source: str | None = None) -> list[int]:
    """Host bytes per process of one replica, the one holding the first shard first: one entry per
    shard in bundle order (stage by stage, each stage's tensor-parallel ranks; the first also
    counting the replica's server process), one for a replica whose engine runs in it or in its
    engine process. `model_source`: what `switchyard plan --model` takes, in place of the model's
    own source."""
    engine = model.engine
    device = "cuda" if engine.device.startswith("cuda") else "cpu"
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    per_stage = [_PROCESS_BYTES[device]] * pp
    if device == "cpu":
        dtype = "float32" if engine.dtype == "auto" else engine.dtype
        config = _model_config(model, model_source)
        dims = ModelDims.from_config(config)
        max_model_len = engine.max_model_len or dims.max_position_embeddings
        num_blocks = engine.num_kv_blocks or engine.max_num_seqs * -(-max_model_len // engine.block_size)
        stages = pipeline_stages(config, pp)
        for index, stage in enumerate(stages):
            if tp == 1 and pp == 1:
                weights = weight_bytes(dims, dtype, engine.quantization)
            else:
                weights = shard_weight_bytes(dims, dtype, tp, stage if pp > 1 else None)
            shape = KVCacheShape(len(stage.layers), dims.num_kv_heads // tp, dims.head_dim, DTYPE_BYTES[dtype])
            per_stage[index] += weights + num_blocks * shape.bytes_per_block(engine.block_size)
    if engine.num_shards == 1 and not model.uses_engine_process:
        return per_stage
    processes = [per_engine for per_engine in per_stage for _ in range(tp)]
    processes[0] += _SERVER_BYTES
    return processes


def _model_config(model: ModelConfig, model_source: str | None) -> Any:
    source = model.source
    try:
        if model_source is not None:
            return load_model_config(model_source)
        if source.demo is not None:
            return tiny_model_config(demo_spec(source.demo))
        if source.path is not None and Path(source.path).is_dir():
            return AutoConfig.from_pretrained(source.path)
        if source.hub_id is not None:
            return AutoConfig.from_pretrained(source.hub_id)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model {model.name!r}: its dimensions could not be read to size its pods ({error}); pass --model-config "
            f"{model.name}=<config.json, model directory or built-in name>"
        ) from None
    raise ValueError(
        f"model {model.name!r}: source.path {source.path!r} is not a directory here, so its dimensions are unknown; "
        f"pass --model-config {model.name}=<config.json, model directory or built-in name>"
    )
