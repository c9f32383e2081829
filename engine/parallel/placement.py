"""What tensor-parallel shards need from a cluster and from a model: placement bundles, and heads
and MLP widths they can split evenly. Torch- and Ray-free, so the serve config and the planner use
the engine's own rules without loading either.
"""

from __future__ import annotations

from typing import Any

from engine.config import EngineConfig

__all__ = ["check_shardable", "shard_bundles", "tensor_parallel_problem"]


def shard_bundles(config: EngineConfig) -> list[dict[str, float]]:
    """One placement-group bundle per shard, stage by stage (bundle `stage * tensor_parallel_size
    + rank`): its CPUs, and on CUDA one GPU."""
    bundle = {"CPU": config.cpus_per_shard}
    if config.device.startswith("cuda"):
        bundle["GPU"] = 1.0
    return [dict(bundle) for _ in range(config.num_shards)]


def tensor_parallel_problem(model_config: Any, tensor_parallel_size: int) -> str | None:
    """Why `tensor_parallel_size` shards cannot split a transformers config's attention heads,
    key/value heads or MLP width evenly; None when they can."""
    text_config = model_config.get_text_config()
    num_heads = text_config.num_attention_heads
    for what, total in (
        ("attention heads", num_heads),
        ("key/value heads", getattr(text_config, "num_key_value_heads", None) or num_heads),
        ("MLP width (intermediate_size)", text_config.intermediate_size),
    ):
        if total % tensor_parallel_size != 0:
            return f"tensor_parallel_size={tensor_parallel_size} must divide the model's {what} ({total})"
    return None


def check_shardable(model_config: Any, tensor_parallel_size: int) -> None:
    """Raise ValueError unless the shards can split the heads, key/value heads and MLP evenly."""
    problem = tensor_parallel_problem(model_config, tensor_parallel_size)
    if problem is not None:
        raise ValueError(problem)
