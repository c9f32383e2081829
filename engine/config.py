"""Engine configuration: a small dataclass that validates itself on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DTYPES",
    "DTYPE_CHOICES",
    "PLACEMENT_STRATEGIES",
    "QUANTIZATIONS",
    "SCHEDULING_POLICIES",
    "DType",
    "DTypeChoice",
    "EngineConfig",
    "PlacementStrategy",
    "Quantization",
    "Scheduling",
    "TENANT_SCHEDULING_POLICIES",
    "TenantScheduling",
]

# The allowed values of the choice fields, once: the serve config's engine settings use these types.
DType = Literal["float32", "bfloat16", "float16"]
# What a config may ask for: a dtype, or "auto" for the device's fastest (engine.hardware).
DTypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
Scheduling = Literal["continuous", "static", "request"]
TenantScheduling = Literal["fair", "fcfs"]
Quantization = Literal["int8", "nf4"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]

DTYPES: tuple[DType, ...] = get_args(DType)
DTYPE_CHOICES: tuple[DTypeChoice, ...] = get_args(DTypeChoice)
SCHEDULING_POLICIES: tuple[Scheduling, ...] = get_args(Scheduling)
TENANT_SCHEDULING_POLICIES: tuple[TenantScheduling, ...] = get_args(TenantScheduling)
QUANTIZATIONS: tuple[Quantization | None, ...] = (None, *get_args(Quantization))
PLACEMENT_STRATEGIES: tuple[PlacementStrategy, ...] = get_args(PlacementStrategy)


@dataclass
class EngineConfig:
    """Everything an engine needs to load a model and schedule requests.

    Invalid values raise `ValueError` naming the field and the value.
    """

    # Hugging Face model directory or hub id, loaded with `from_pretrained`.
    model: str
    # Tokenizer directory or hub id; None means the model's own.
    tokenizer: str | None = None
    # Weights and KV cache dtype. "auto" takes bfloat16 where the device multiplies it fast (CPUs
    # with AMX or AVX-512-BF16, GPUs that support it), else float32 on a CPU and float16 on a GPU;
    # the engine resolves it when it starts (`LLMEngine.config.dtype` is then the dtype it runs).
    dtype: DTypeChoice = "auto"
    # "cpu", "cuda" or "cuda:N".
    device: str = "cpu"
    # Tokens per KV block. Smaller blocks waste less memory per sequence, larger ones mean
    # fewer block-table entries to gather.
    block_size: int = 16
    # KV pool size in blocks. None sizes it from `kv_cache_memory_fraction`.
    num_kv_blocks: int | None = None
    # Fraction of the device's free memory (after weights) given to the KV cache when
    # `num_kv_blocks` is None; on CPU, a fraction of available system memory. The pool is capped
    # at what `max_num_seqs` sequences of `max_model_len` tokens can use.
    kv_cache_memory_fraction: float = 0.9
    # Most sequences in one step's batch.
    max_num_seqs: int = 64
    # Token budget per step: decode tokens plus prefill chunk tokens.
    max_num_batched_tokens: int = 2048
    # Longest prompt + output, in tokens. None takes the model's `max_position_embeddings`.
    max_model_len: int | None = None
    # "continuous" (iteration-level), "static" (a batch runs until its longest member ends) or
    # "request" (one request at a time).
    scheduling: Scheduling = "continuous"
    # How requests of different tenants share the steps. "fair": the tenant that received the least
    # weighted service goes first (a Virtual Token Counter, engine.core.fair_policy), and under
    # continuous scheduling a tenant below its fair share of `max_num_seqs` may preempt one above
    # it; "fcfs": arrival order, whatever the tenant. With one tenant the two are the same.
    tenant_scheduling: TenantScheduling = "fair"
    # Reuse KV blocks of identical prompt prefixes across requests.
    enable_prefix_caching: bool = True
    # bitsandbytes weight quantization of the decoder layers' projections: "int8" (LLM.int8 without
    # outlier columns, so a request's tokens do not depend on its batch) or "nf4" (4-bit
    # NormalFloat, computing in `dtype`). Embeddings, norms and the LM head stay in `dtype`.
    quantization: Quantization | None = None
    # Tensor-parallel shards of the model. 1 runs in this process; N > 1 runs one Ray actor per
    # shard (each holding 1/N of the attention heads, MLP and vocabulary) in a placement group.
    tensor_parallel_size: int = 1
    # Pipeline stages of the model: its decoder layers split into this many consecutive parts, each
    # a Ray actor (or a group of `tensor_parallel_size` actors) holding only its layers' weights
    # and KV cache; the first also holds the embedding, the last the final norm and LM head, and
    # only hidden states travel between them. Up to this many scheduled batches are in the
    # pipeline at once. Llama-family decoders only.
    pipeline_parallel_size: int = 1
    # How the shards' placement group spreads over nodes: "PACK" (fewest nodes, best effort),
    # "SPREAD", "STRICT_PACK" (one node) or "STRICT_SPREAD" (one shard per node). The group holds
    # every shard of every stage, stage by stage.
    placement_strategy: PlacementStrategy = "PACK"
    # CPUs each shard actor reserves (and its torch threads on CPU). On CUDA each shard also
    # reserves one GPU.
    cpus_per_shard: float = 1.0
    # Seed for requests that carry none of their own.
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty model directory or hub id, got {self.model!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.scheduling not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling must be one of {SCHEDULING_POLICIES}, got {self.scheduling!r}")
        if self.tenant_scheduling not in TENANT_SCHEDULING_POLICIES:
            raise ValueError(
                f"tenant_scheduling must be one of {TENANT_SCHEDULING_POLICIES}, got {self.tenant_scheduling!r}"
            )
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            size = getattr(self, name)
            if isinstance(size, bool) or not isinstance(size, int):
                raise ValueError(f"{name} must be an integer, got {size!r}")
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
            if self.quantization is not None and size != 1:
                raise ValueError(
                    f"quantization {self.quantization!r} cannot be combined with {name}={size}: bitsandbytes "
                    "weights cannot be split into shards"
                )
            if size > 1 and self.device.startswith("cuda:"):
                raise ValueError(
                    f"device must be 'cuda' or 'cpu' with {name} > 1 (Ray gives each shard its own GPU), "
                    f"got {self.device!r}"
                )
        if self.pipeline_parallel_size > 1 and self.scheduling != "continuous":
            raise ValueError(
                f"scheduling must be 'continuous' with pipeline_parallel_size > 1 (batches in flight at once), "
                f"got {self.scheduling!r}"
            )
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}"
            )
        if not self.cpus_per_shard > 0:
            raise ValueError(f"cpus_per_shard must be > 0, got {self.cpus_per_shard}")

    @property
    def num_shards(self) -> int:
        """The Ray actors the model runs in, every stage's tensor-parallel shards; 1 runs in this
        process."""
        return self.tensor_parallel_size * self.pipeline_parallel_size
