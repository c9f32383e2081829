"""What a model's keys and values take in the paged KV cache: per token, per block, per shard (a
tensor-parallel slice of a pipeline stage's layers).

Torch-free, so the planner and the serve config can size a cache without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import DType

__all__ = ["DTYPE_BYTES", "KVCacheShape", "kv_cache_shape"]

# Bytes of one element of each engine dtype.
DTYPE_BYTES: dict[DType, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class KVCacheShape:
    """What one token's keys and values take in the cache of a model (or of one shard of it)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    def bytes_per_block(self, block_size: int) -> int:
        # keys and values, every layer
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_block(1)


def kv_cache_shape(
    model_config: Any, dtype: DType, tensor_parallel_size: int = 1, num_layers: int | None = None
) -> KVCacheShape:
    """The cache shape of one shard of a transformers config: it holds 1/tensor_parallel_size of
    the key/value heads, of `num_layers` layers (a pipeline stage's; None: all of them)."""
    text_config = model_config.get_text_config()
    num_heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads
    num_kv_heads = getattr(text_config, "num_key_value_heads", None) or num_heads
    return KVCacheShape(
        num_layers=text_config.num_hidden_layers if num_layers is None else num_layers,
        num_kv_heads=num_kv_heads // tensor_parallel_size,
        head_dim=head_dim,
        dtype_bytes=DTYPE_BYTES[dtype],
    )
