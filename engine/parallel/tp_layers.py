"""Layers of a tensor-parallel shard: each holds a slice of a full layer's weight and meets the
other shards of its stage in one collective (in the stage's process group) where the math needs
the whole.

The Megatron split of a decoder layer, which needs two all-reduces per layer:

- q/k/v and gate/up projections are split by output rows (whole heads, MLP columns): a plain
  smaller `nn.Linear`, no communication, and attention then runs on this shard's heads only;
- o_proj and down_proj are split by input columns (`RowParallelLinear`): each shard computes a
  partial sum of the output, and an all-reduce adds them;
- the embedding is split by vocabulary rows (`VocabParallelEmbedding`): each shard looks up the
  tokens it holds and zeros the rest, and an all-reduce fills every row (one shard contributes
  each row, so the sum is exact);
- the LM head is split by vocabulary rows too (`VocabParallelLMHead`): rank 0 gathers the logit
  slices into whole rows, for it alone samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ShardGroup", "RowParallelLinear", "VocabParallelEmbedding", "VocabParallelLMHead"]


@dataclass(frozen=True)
class ShardGroup:
    """This process's place among the tensor-parallel shards of one pipeline stage (of the whole
    model without pipeline stages)."""

    rank: int
    world_size: int
    # The stage's torch.distributed group for the collectives; None: the default group, when the
    # stage's shards are the whole world.
    process_group: dist.ProcessGroup | None = None

    def split(self, total: int, what: str) -> tuple[int, int]:
        """[start, end) of this shard's equal part of `total` items; `what` names them in errors."""
        if total % self.world_size != 0:
            raise ValueError(f"tensor_parallel_size={self.world_size} must divide the model's {what} ({total})")
        part = total // self.world_size
        return self.rank * part, (self.rank + 1) * part


class RowParallelLinear(nn.Linear):
    """A linear layer over this shard's slice of the input features; outputs are summed over shards.

    `weight` is (out_features, in_features / world_size); the bias, whole, is added once after
    the sum.
    """

    def __init__(self, in_features: int, out_features: int, group: ShardGroup, **kwargs: object) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)
        dist.all_reduce(partial, group=self.group.process_group)
        return partial if self.bias is None else partial + self.bias


class VocabParallelEmbedding(nn.Embedding):
    """Embedding rows [vocab_start, vocab_start + num_embeddings) of the whole vocabulary."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, vocab_start: int, group: ShardGroup, **kwargs: object
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.vocab_start = vocab_start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local_ids = input_ids - self.vocab_start
        held = (local_ids >= 0) & (local_ids < self.num_embeddings)
        embedded = F.embedding(local_ids.clamp(0, self.num_embeddings - 1), self.weight)
        embedded = embedded * held.unsqueeze(-1).to(embedded.dtype)  # rows of other shards' tokens: 0
        dist.all_reduce(embedded, group=self.group.process_group)
        return embedded


class VocabParallelLMHead(nn.Linear):
    """Logits for this shard's vocabulary slice; rank 0 returns whole rows, other ranks their slice.

    (..., hidden) -> (..., vocab) on rank 0, (..., vocab / world_size) elsewhere.
    """

    def __init__(self, in_features: int, out_features: int, group: ShardGroup, **kwargs: object) -> None:
        super().__init__(in_features, out_features, bias=False, **kwargs)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.linear(x, self.weight).contiguous()
        if self.group.rank != 0:
            dist.gather(local, group=self.group.process_group, group_dst=0)
            return local
        slices = [torch.empty_like(local) for _ in range(self.group.world_size)]
        dist.gather(local, gather_list=slices, group=self.group.process_group, group_dst=0)
        return torch.cat(slices, dim=-1)
