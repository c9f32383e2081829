"""A model's engine settings in the serve config: `engine.EngineConfig` without the model.

The engine's dataclass is the one source of each field's type, allowed values and default; this
model adds the YAML descriptions and the replica's start timeout. `tests/unit/test_config_validation`
fails when a field exists on one side only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from deployments.config.strict import Strict
from engine import EngineConfig
from engine.config import DTypeChoice, PlacementStrategy, Quantization, Scheduling, TenantScheduling

__all__ = ["ENGINE_ONLY_FIELDS", "REPLICA_ONLY_FIELDS", "EngineSettings"]

# EngineConfig fields the serve config sets elsewhere: the model comes from the model's `source`.
ENGINE_ONLY_FIELDS = frozenset({"model"})
# EngineSettings fields that are the replica's, not the engine's.
REPLICA_ONLY_FIELDS = frozenset({"start_timeout_s", "engine_process"})

_DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(EngineConfig)}


def _engine_field(name: str, description: str, **constraints: Any) -> Any:
    """A field whose default is EngineConfig's."""
    return Field(default=_DEFAULTS[name], description=description, **constraints)


class EngineSettings(Strict):
    """The engine's settings (engine.EngineConfig without the model, which comes from `source`)."""

    tokenizer: str | None = _engine_field(
        "tokenizer", "Tokenizer directory or hub id; null uses the model's own."
    )
    dtype: DTypeChoice = _engine_field(
        "dtype",
        "Weights and KV cache dtype; auto: bfloat16 where the device computes it fast (CPUs with AMX or "
        "AVX-512-BF16, GPUs that support it), else float32 on CPU and float16 on GPU.",
    )
    device: str = _engine_field("device", "'cpu', 'cuda' or 'cuda:N'.")
    block_size: int = _engine_field("block_size", "Tokens per KV block (a power of two).")
    num_kv_blocks: int | None = _engine_field(
        "num_kv_blocks", "KV pool size in blocks; null sizes it from kv_cache_memory_fraction."
    )
    kv_cache_memory_fraction: float = _engine_field(
        "kv_cache_memory_fraction",
        "Fraction of free device memory (system memory on CPU) for the KV cache when num_kv_blocks is null; "
        "capped at what max_num_seqs sequences of max_model_len tokens can use.",
    )
    max_num_seqs: int = _engine_field("max_num_seqs", "Most sequences in one step's batch.")
    max_num_batched_tokens: int = _engine_field(
        "max_num_batched_tokens", "Token budget per step: decode tokens plus prefill chunk tokens."
    )
    max_model_len: int | None = _engine_field(
        "max_model_len", "Longest prompt + output in tokens; null takes the model's max_position_embeddings."
    )
    scheduling: Scheduling = _engine_field(
        "scheduling", "Batching policy: iteration-level, batch-level, or one request at a time."
    )
    tenant_scheduling: TenantScheduling = _engine_field(
        "tenant_scheduling",
        "How tenants share the engine's steps: fair (the tenant with the least weighted service received goes "
        "first, and under continuous scheduling one below its weighted share of max_num_seqs may preempt one "
        "above it) or fcfs (arrival order, whatever the tenant).",
    )
    enable_prefix_caching: bool = _engine_field(
        "enable_prefix_caching", "Reuse KV blocks of identical prompt prefixes."
    )
    quantization: Quantization | None = _engine_field(
        "quantization",
        "bitsandbytes weight quantization of the decoder layers' projections (not with tensor_parallel_size > 1 "
        "or pipeline_parallel_size > 1).",
    )
    tensor_parallel_size: int = _engine_field(
        "tensor_parallel_size",
        "Tensor-parallel shards of the model, one Ray actor (and on CUDA one GPU) each, reserved with the replica "
        "as one placement group; 1 runs the model in the replica.",
        ge=1,
    )
    pipeline_parallel_size: int = _engine_field(
        "pipeline_parallel_size",
        "Pipeline stages of the model: its decoder layers split into this many consecutive parts, each stage "
        "tensor_parallel_size Ray actors (on CUDA a GPU each) holding only its layers' weights and KV cache, "
        "reserved with the replica as one placement group; up to this many batches are in flight at once. "
        "Llama-family models.",
        ge=1,
    )
    placement_strategy: PlacementStrategy = _engine_field(
        "placement_strategy",
        "How a replica's shards spread over nodes (the replica shares the first shard's bundle; the bundles are "
        "stage by stage): PACK (fewest nodes), SPREAD, STRICT_PACK (one node) or STRICT_SPREAD (one shard per node).",
    )
    cpus_per_shard: float = _engine_field(
        "cpus_per_shard",
        "CPUs each shard reserves (its torch threads on CPU) when the model has more than one shard.",
        gt=0,
    )
    seed: int = _engine_field("seed", "Seed for requests that carry none of their own.")
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="Seconds the engine may take to load weights before the replica fails."
    )
    engine_process: bool = Field(
        default=True,
        description="Run the model and its step loop in a child process of the replica, so the replica's serving "
        "work never holds the GIL the forward pass needs; false runs it on a thread of the replica. With "
        "tensor_parallel_size > 1 or pipeline_parallel_size > 1 the engine always runs in the replica (its shards "
        "are processes already).",
    )

    @property
    def num_shards(self) -> int:
        """The Ray actors the model runs in (1: the replica runs it)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_engine_config(self, model: str) -> EngineConfig:
        """The engine's own config; raises ValueError naming a field the engine refuses."""
        return EngineConfig(model=model, **self.model_dump(exclude=set(REPLICA_ONLY_FIELDS)))
