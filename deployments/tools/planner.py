"""Memory planning before deploying: weights, KV cache per token and per sequence, GPUs needed.

From a model's config.json (or a well-known model's published dimensions), a dtype or
quantization, the GPU memory, the context length and the target concurrency, `plan` says how many
bytes the weights take, what one token and one full-length sequence take in the KV cache, the
smallest tensor-parallel size whose GPUs hold the weights plus one sequence, and how many
sequences then fit. The figures are the engine's own: parameters are counted on the model's
transformers class built on the meta device (exact for any architecture, no memory), a shard's on
the engine's tensor-parallel split of it, and the KV arithmetic is `engine.KVCacheShape`.

torch and transformers are imported here; `switchyard check` never imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from engine import DTYPE_BYTES, KVCacheShape, tensor_parallel_problem
from engine.config import Quantization
from engine.parallel.shard_loader import shard_on_meta
from engine.parallel.stages import PipelineStage, pipeline_stages
from engine.parallel.tp_layers import ShardGroup

__all__ = ["KNOWN_MODELS", "ModelDims", "Plan", "load_model_config", "plan", "weight_bytes"]

# Published dimensions of well-known models, as their config.json files give them.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama-2-13b": {
        "model_type": "llama",
        "hidden_size": 5120,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "intermediate_size": 13824,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama-2-70b": {
        "model_type": "llama",
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 28672,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    },
    "mistral-7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32768,
        "max_position_embeddings": 32768,
    },
    "qwen2.5-32b": {
        "model_type": "qwen2",
        "hidden_size": 5120,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "intermediate_size": 27648,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    },
}

# bitsandbytes storage of a quantized projection: int8 is one byte per weight plus one float32
# scale per output row; nf4 packs two weights a byte, plus one float32 absmax per block of 64
# weights and its own 16-entry float32 code table.
_NF4_BLOCK = 64
_NF4_CODE_BYTES = 16 * 4


@dataclass(frozen=True)
class ModelDims:
    """What sizes a decoder-only causal LM: counted on its transformers class, built on meta."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    # (out, in) of every linear layer but the LM head: the weights bitsandbytes quantizes.
    linear_shapes: tuple[tuple[int, int], ...]
    # Every other parameter (embeddings, LM head, norms, biases), tied ones once: kept in the model
    # dtype when quantized.
    num_other_parameters: int
    # The model's config, for building its tensor-parallel shards (not part of the figures).
    config: PretrainedConfig = field(compare=False, repr=False)

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelDims:
        text = config.get_text_config()
        num_heads = text.num_attention_heads
        # On the meta device, as the engine's shards are built: accelerate's init_empty_weights
        # leaves tied embeddings untied, which would count the LM head twice.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        head = model.get_output_embeddings()
        linears = [module for module in model.modules() if isinstance(module, nn.Linear) and module is not head]
        num_linear = sum(module.weight.numel() for module in linears)
        return cls(
            num_layers=text.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // num_heads,
            max_position_embeddings=text.max_position_embeddings,
            linear_shapes=tuple((module.out_features, module.in_features) for module in linears),
            num_other_parameters=sum(p.numel() for p in model.parameters()) - num_linear,
            config=config,
        )

    def num_parameters(self) -> int:
        return sum(out * inner for out, inner in self.linear_shapes) + self.num_other_parameters


def load_model_config(model: str) -> Any:
    """A transformers config from a built-in name, a config.json path, or a model directory."""
    if model in KNOWN_MODELS:
        known = dict(KNOWN_MODELS[model])
        return AutoConfig.for_model(known.pop("model_type"), **known)
    path = Path(model)
    if path.is_file():
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "model_type" not in data:
            raise ValueError(f"{model}: a config.json names its model_type")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    raise ValueError(f"model must be one of {sorted(KNOWN_MODELS)}, a config.json or a model directory, got {model!r}")


def weight_bytes(dims: ModelDims, dtype: str, quantization: Quantization | None) -> int:
    """Bytes of the weights as stored (quantized weights at their real size, scales included)."""
    dtype_bytes = DTYPE_BYTES[dtype]
    other = dims.num_other_parameters * dtype_bytes
    shapes = dims.linear_shapes
    if quantization is None:
        return other + sum(out * inner for out, inner in shapes) * dtype_bytes
    if quantization == "int8":
        return other + sum(out * inner + out * 4 for out, inner in shapes)
    return other + sum(
        (out * inner + 1) // 2 + -(-out * inner // _NF4_BLOCK) * 4 + _NF4_CODE_BYTES for out, inner in shapes
    )


def shard_weight_bytes(
    dims: ModelDims, dtype: str, tensor_parallel_size: int, stage: PipelineStage | None = None
) -> int:
    """Bytes one of `tensor_parallel_size` unquantized shards of pipeline `stage` (None: the whole
    model) holds (every rank of a stage holds the same sizes)."""
    stages = [stage] if stage is not None else pipeline_stages(dims.config, 1)
    return stage_weight_bytes(dims, dtype, tensor_parallel_size, stages)[0]


def stage_weight_bytes(
    dims: ModelDims, dtype: str, tensor_parallel_size: int, stages: list[PipelineStage]
) -> list[int]:
    """Bytes one shard of each of `stages` holds, unquantized: rank 0 of the engine's own
    tensor-parallel split with what each stage keeps (engine.parallel.shard_loader)."""
    counts = _ShardCounts.of(dims, tensor_parallel_size)
    return [counts.of_stage(stage) * DTYPE_BYTES[dtype] for stage in stages]


@dataclass(frozen=True)
class _ShardCounts:
    """Parameters of one tensor-parallel shard, by where a pipeline stage keeps them: each decoder
    layer, the embedding (first stage), the final norm and LM head (last stage; with tied
    embeddings the last stage holds the embedding too, as the head's weight)."""

    per_layer: tuple[int, ...]
    embedding: int
    norm_and_head: int
    tied: bool

    @classmethod
    def of(cls, dims: ModelDims, tensor_parallel_size: int) -> _ShardCounts:
        """Counted on rank 0 of the engine's split, built on the meta device."""
        shard, _ = shard_on_meta(dims.config, torch.float32, ShardGroup(rank=0, world_size=tensor_parallel_size))
        inner = shard.model

        def count(*modules: nn.Module) -> int:
            # A tensor shared by several modules (tied embeddings) counts once.
            unique = {id(p): p for module in modules for p in module.parameters()}
            return sum(p.numel() for p in unique.values())

        if count(inner.embed_tokens, inner.norm, shard.lm_head, *inner.layers) != count(shard):
            raise ValueError(f"{type(shard).__name__} holds weights outside its layers, embedding, norm and LM head")
        return cls(
            per_layer=tuple(count(layer) for layer in inner.layers),
            embedding=count(inner.embed_tokens),
            norm_and_head=count(inner.norm, shard.lm_head),
            tied=shard.lm_head.weight is inner.embed_tokens.weight,
        )

    def of_stage(self, stage: PipelineStage) -> int:
        total = sum(self.per_layer[index] for index in stage.layers)
        if stage.is_first or (self.tied and stage.is_last):
            total += self.embedding
        if stage.is_last:
            # A tied head's weight is the embedding, counted above.
            total += self.norm_and_head - (self.embedding if self.tied else 0)
        return total


@dataclass(frozen=True)
class Plan:
    """What serving a model takes. Bytes are exact; GPUs are whole devices."""

    weight_bytes: int
    kv_bytes_per_token: int
    # A full-length sequence, in whole KV blocks as the engine allocates them.
    kv_bytes_per_sequence: int
    # Smallest tensor-parallel size (one stage) whose GPUs hold the weights and one full-length
    # sequence; None when no size up to the head count and a node's GPUs does (quantized weights
    # are never split).
    min_tensor_parallel_size: int | None
    # The tensor-parallel x pipeline-parallel grid that serves the target concurrency on the fewest
    # GPUs (on a tie: fewer stages, then the smaller tensor-parallel size), the full-length
    # sequences one replica of it holds, and the replicas needed. Tensor parallelism stays within
    # a node; stages may be on different nodes.
    tensor_parallel_size: int | None
    sequences_per_replica: int
    num_replicas: int
    pipeline_parallel_size: int = 1
    # The most weight bytes and KV pool bytes one GPU of the chosen grid holds (0 when nothing fits).
    weight_bytes_per_gpu: int = 0
    kv_bytes_per_gpu: int = 0

    @property
    def num_gpus(self) -> int:
        return (self.tensor_parallel_size or 0) * self.pipeline_parallel_size * self.num_replicas


@dataclass(frozen=True)
class _Grid:
    """One tensor-parallel x pipeline-parallel candidate and what a replica of it holds."""

    num_gpus: int
    pipeline_parallel_size: int
    tensor_parallel_size: int
    sequences_per_replica: int
    num_replicas: int
    weight_bytes_per_gpu: int
    kv_bytes_per_gpu: int


def plan(
    dims: ModelDims,
    *,
    dtype: str,
    quantization: Quantization | None,
    gpu_memory_bytes: int,
    memory_fraction: float,
    context_len: int,
    concurrency: int,
    block_size: int = 16,
    gpus_per_node: int = 8,
    max_pipeline_parallel_size: int = 16,
) -> Plan:
    """The plan for serving `concurrency` sequences of `context_len` tokens on such GPUs,
    `gpus_per_node` to a node."""
    weights = weight_bytes(dims, dtype, quantization)
    shape = KVCacheShape(dims.num_layers, dims.num_kv_heads, dims.head_dim, DTYPE_BYTES[dtype])
    blocks_per_sequence = -(-context_len // block_size)
    per_sequence = shape.bytes_per_block(block_size) * blocks_per_sequence
    usable_per_gpu = int(gpu_memory_bytes * memory_fraction)
    grids: list[_Grid] = []
    # bitsandbytes weights are never split. Tensor parallelism stays within a node; stages, which
    # pass only hidden states, take the model across nodes, each stage as wide as a node allows
    # (a stage per node, as far as the layers go).
    tensor_sizes = [1] if quantization else [tp for tp in _tensor_parallel_sizes(dims) if tp <= gpus_per_node]
    most_stages = 1 if quantization else min(dims.num_layers, max_pipeline_parallel_size)
    for tp in tensor_sizes:
        counts = None if quantization else _ShardCounts.of(dims, tp)
        for pp in range(1, most_stages + 1) if tp == tensor_sizes[-1] else [1]:
            stages = pipeline_stages(dims.config, pp)
            held = [weights] if counts is None else [counts.of_stage(stage) * DTYPE_BYTES[dtype] for stage in stages]
            # Each GPU holds its stage's slice of the weights and of every sequence's KV.
            sequence_bytes = [
                KVCacheShape(len(stage.layers), dims.num_kv_heads // tp, dims.head_dim, DTYPE_BYTES[dtype])
                .bytes_per_block(block_size) * blocks_per_sequence
                for stage in stages
            ]  # fmt: skip
            fits = min((usable_per_gpu - weights_here) // kv for weights_here, kv in zip(held, sequence_bytes))
            if fits >= 1:
                replicas = -(-concurrency // fits)
                grids.append(
                    _Grid(replicas * tp * pp, pp, tp, fits, replicas, max(held), fits * max(sequence_bytes))
                )
    if not grids:
        return Plan(weights, shape.bytes_per_token, per_sequence, None, None, 0, 0)
    single_stage = [grid.tensor_parallel_size for grid in grids if grid.pipeline_parallel_size == 1]
    best = min(grids, key=lambda grid: (grid.num_gpus, grid.pipeline_parallel_size, grid.tensor_parallel_size))
    return Plan(
        weight_bytes=weights,
        kv_bytes_per_token=shape.bytes_per_token,
        kv_bytes_per_sequence=per_sequence,
        min_tensor_parallel_size=min(single_stage) if single_stage else None,
        tensor_parallel_size=best.tensor_parallel_size,
        sequences_per_replica=best.sequences_per_replica,
        num_replicas=best.num_replicas,
        pipeline_parallel_size=best.pipeline_parallel_size,
        weight_bytes_per_gpu=best.weight_bytes_per_gpu,
        kv_bytes_per_gpu=best.kv_bytes_per_gpu,
    )


def _tensor_parallel_sizes(dims: ModelDims) -> list[int]:
    """Powers of two up to the head count that the engine can split the model into."""
    sizes, tp = [], 1
    while tp <= dims.num_heads:
        if tensor_parallel_problem(dims.config, tp) is None:
            sizes.append(tp)
        tp *= 2
    return sizes


def render(
    model: str,
    result: Plan,
    *,
    dtype: str,
    quantization: Quantization | None,
    context_len: int,
    gpus_per_node: int = 8,
) -> str:
    """The plan as a table of figures and a serve-config snippet to start from."""
    gib = 2**30
    lines = [
        f"model {model}: {dtype}" + (f", {quantization}" if quantization else ""),
        f"  weights                   {result.weight_bytes:>16,} bytes  {result.weight_bytes / gib:9.2f} GiB",
        f"  KV per token              {result.kv_bytes_per_token:>16,} bytes",
        (
            f"  KV per sequence ({context_len} tok) {result.kv_bytes_per_sequence:>12,} bytes"
            f"  {result.kv_bytes_per_sequence / gib:9.2f} GiB"
        ),
    ]
    if result.tensor_parallel_size is None:
        lines.append(
            "  does not fit: no tensor-parallel x pipeline-parallel grid holds the weights and one full-length sequence"
        )
        return "\n".join(lines)
    tp, pp = result.tensor_parallel_size, result.pipeline_parallel_size
    lines += [
        f"  min tensor-parallel size  {result.min_tensor_parallel_size or 'none (one node cannot hold it)'}",
        (
            f"  weights per GPU           {result.weight_bytes_per_gpu:>16,} bytes"
            f"  {result.weight_bytes_per_gpu / gib:9.2f} GiB"
        ),
        f"  KV per GPU                {result.kv_bytes_per_gpu:>16,} bytes  {result.kv_bytes_per_gpu / gib:9.2f} GiB",
        (
            f"  chosen: tensor-parallel {tp} x pipeline-parallel {pp} x {result.num_replicas} replicas "
            f"= {result.num_gpus} GPUs, {result.sequences_per_replica} full-length sequences per replica"
        ),
        "",
        "serve config snippet (applications[].args.models[]):",
        f"  - name: {model}",
        "    source: {hub_id: <org/name>}   # or path: /models/...",
        "    engine:",
        "      device: cuda",
        f"      dtype: {dtype}",
        f"      max_model_len: {context_len}",
        f"      max_num_seqs: {result.sequences_per_replica}",
    ]
    if quantization:
        lines.append(f"      quantization: {quantization}")
    if tp > 1:
        lines.append(f"      tensor_parallel_size: {tp}")
    if pp > 1:
        lines.append(f"      pipeline_parallel_size: {pp}")
    if tp * pp > 1:
        strategy = "STRICT_PACK   # one node" if tp * pp <= gpus_per_node else "PACK   # stages over nodes"
        lines.append(f"      placement_strategy: {strategy}")
    lines += [
        "    deployment:",
        f"      num_replicas: {result.num_replicas}",
        # A sharded replica's GPUs are its shards' (one each); the replica itself takes none.
        f"      ray_actor_options: {{num_gpus: {0 if tp * pp > 1 else 1}}}",
    ]
    return "\n".join(lines)
