"""Attention over the paged KV cache, plugged into transformers' `AttentionInterface`.

The model runs on packed input: every scheduled token of every sequence in one row,
`input_ids (1, T)` with per-token `position_ids`. Each attention layer calls
`paged_attention_forward`, which

1. writes the new tokens' keys and values into their cache slots (`slot_mapping`), then
2. for each group of sequences (decodes, and chunks of prompt), gathers the queries into
   `(S, Q)` and each sequence's cached keys and values into `(S, K)` through its block table,
   and runs one masked `scaled_dot_product_attention` for the whole group. Gathers copy whole
   blocks with `index_select`.

Decodes (one query each) and prompt chunks are grouped apart so that a long prompt chunk does not
pad every decode to its length, and decodes are further split by context length (see
`split_by_context`) so that short contexts are not padded to the longest one. The metadata
reaches the layers through the forward's kwargs (`paged_metadata=`); everything index-shaped is
built once per step, not once per layer.

Cache layout per layer: `(num_blocks * block_size, num_kv_heads, head_dim)`; the slot of a
sequence's token at position p is `block_ids[p // block_size] * block_size + p % block_size`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

__all__ = [
    "PAGED_ATTENTION",
    "AttentionGroup",
    "PagedAttentionMetadata",
    "register_paged_attention",
    "paged_attention_forward",
    "build_metadata",
    "split_by_context",
]

PAGED_ATTENTION = "switchyard_paged"


@dataclass
class AttentionGroup:
    """Sequences whose attention runs as one padded SDPA call."""

    # (S, Q) packed-token index of each query; padding repeats the sequence's last token.
    query_index: torch.Tensor
    # (S * B,) the block tables of the S sequences, each padded to B blocks with block 0 (masked
    # out), one after another. Context is gathered a whole block at a time: K = B * block_size.
    block_ids: torch.Tensor
    blocks_per_seq: int
    # (S, Q) position of each query, and (S,) context length (cached + new tokens).
    query_positions: torch.Tensor
    context_lens: torch.Tensor
    # Rows of the flattened (S * Q) output that are real queries (None: all of them, as for
    # decodes), and where they go in (T,).
    valid_rows: torch.Tensor | None
    token_index: torch.Tensor
    # Masks by sliding window (None = full causal), built on first use.
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, sliding_window: int | None, block_size: int) -> torch.Tensor:
        """(S, 1, Q, K) bool: True where a query may attend to a context position."""
        cached = self._masks.get(sliding_window)
        if cached is not None:
            return cached
        num_context = self.blocks_per_seq * block_size
        kv_positions = torch.arange(num_context, device=self.block_ids.device)  # (K,)
        q_pos = self.query_positions[:, :, None]  # (S, Q, 1)
        allowed = (kv_positions[None, None, :] <= q_pos) & (
            kv_positions[None, None, :] < self.context_lens[:, None, None]
        )
        if sliding_window is not None:
            allowed &= kv_positions[None, None, :] > q_pos - sliding_window
        mask = allowed[:, None, :, :]
        self._masks[sliding_window] = mask
        return mask


@dataclass
class PagedAttentionMetadata:
    """Everything the attention layers need for one step."""

    # (T,) cache slot where each packed token's key and value are written.
    slot_mapping: torch.Tensor
    groups: list[AttentionGroup]
    # By layer index (a pipeline stage's layers only): (key_cache, value_cache), each
    # (num_blocks * block_size, num_kv_heads, head_dim).
    kv_caches: dict[int, tuple[torch.Tensor, torch.Tensor]]
    block_size: int


def register_paged_attention() -> None:
    """Make `attn_implementation=PAGED_ATTENTION` available to `from_pretrained`."""
    AttentionInterface.register(PAGED_ATTENTION, paged_attention_forward)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """query (1, H, T, D), key/value (1, KVH, T, D) -> (1, T, H, D)."""
    metadata = kwargs.get("paged_metadata")
    if not isinstance(metadata, PagedAttentionMetadata):
        raise RuntimeError(f"{PAGED_ATTENTION} attention needs paged_metadata= in the model's forward kwargs")
    if softcap is not None:
        raise NotImplementedError(f"{PAGED_ATTENTION} attention does not support logit softcapping")
    key_cache, value_cache = metadata.kv_caches[module.layer_idx]
    key_cache.index_copy_(0, metadata.slot_mapping, key[0].transpose(0, 1))  # (T, KVH, D)
    value_cache.index_copy_(0, metadata.slot_mapping, value[0].transpose(0, 1))
    block_size = metadata.block_size
    num_kv_heads, head_dim = key_cache.shape[1], key_cache.shape[2]
    key_blocks = key_cache.view(-1, block_size, num_kv_heads, head_dim)  # (num_blocks, bs, KVH, D)
    value_blocks = value_cache.view(-1, block_size, num_kv_heads, head_dim)

    queries = query[0].transpose(0, 1)  # (T, H, D)
    num_heads = queries.shape[1]
    output = queries.new_empty(queries.shape)
    for group in metadata.groups:
        num_seqs, num_queries = group.query_index.shape
        # index_select copies whole rows; indexing with a 2-D tensor is several times slower on CPU.
        group_queries = queries.index_select(0, group.query_index.flatten())  # (S * Q, H, D)
        # (S * B, bs, KVH, D) -> (S, KVH, K, D)
        group_keys = key_blocks.index_select(0, group.block_ids).view(num_seqs, -1, num_kv_heads, head_dim)
        group_values = value_blocks.index_select(0, group.block_ids).view(num_seqs, -1, num_kv_heads, head_dim)
        mask = group.mask(sliding_window, block_size)  # (S, 1, Q, K)
        if num_queries == 1:
            # Decodes: the H / KVH query heads that share a KV head become its query rows,
            # (S, KVH, H / KVH, D), so SDPA runs without grouped-query expansion (a third to
            # half the time on CPU at short contexts); one query's mask fits every row.
            packed = group_queries.view(num_seqs, num_kv_heads, -1, head_dim)
            attended = F.scaled_dot_product_attention(
                packed, group_keys.transpose(1, 2), group_values.transpose(1, 2), attn_mask=mask, scale=scaling
            ).reshape(num_seqs, 1, num_heads, head_dim)  # (S, Q, H, D)
        else:
            attended = F.scaled_dot_product_attention(
                group_queries.view(num_seqs, num_queries, num_heads, head_dim).transpose(1, 2),  # (S, H, Q, D)
                group_keys.transpose(1, 2),
                group_values.transpose(1, 2),
                attn_mask=mask,
                scale=scaling,
                enable_gqa=True,
            ).transpose(1, 2)  # (S, Q, H, D)
        flat = attended.reshape(-1, num_heads, head_dim)  # (S * Q, H, D)
        if group.valid_rows is not None:
            flat = flat.index_select(0, group.valid_rows)
        output.index_copy_(0, group.token_index, flat)
    return output.unsqueeze(0), None


def build_metadata(
    chunk_lengths: list[int],
    start_positions: list[int],
    block_tables: list[list[int]],
    block_size: int,
    kv_caches: dict[int, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> tuple[PagedAttentionMetadata, torch.Tensor]:
    """Metadata for a packed step, and the (T,) position of every packed token.

    Chunk i holds tokens [start_positions[i], start_positions[i] + chunk_lengths[i]) of its
    sequence, whose blocks are block_tables[i].
    """
    num_chunks = len(chunk_lengths)
    lengths = torch.tensor(chunk_lengths, dtype=torch.long)  # (N,)
    starts = torch.tensor(start_positions, dtype=torch.long)  # (N,)
    offsets = torch.cumsum(lengths, 0) - lengths  # (N,) first packed index of each chunk
    max_blocks = max(len(table) for table in block_tables)
    padded = [table + [0] * (max_blocks - len(table)) for table in block_tables]
    tables = torch.tensor(padded, dtype=torch.long)  # (N, max_blocks), padded with block 0

    chunk_of_token = torch.repeat_interleave(torch.arange(num_chunks), lengths)  # (T,)
    positions = starts[chunk_of_token] + torch.arange(int(lengths.sum())) - offsets[chunk_of_token]
    slot_mapping = _slots(tables[chunk_of_token], positions, block_size)

    decode_ids = [i for i, n in enumerate(chunk_lengths) if n == 1]
    prefill_ids = [i for i, n in enumerate(chunk_lengths) if n != 1]
    context_lens = [start_positions[i] + 1 for i in decode_ids]
    member_lists = [*split_by_context(decode_ids, context_lens), prefill_ids]
    groups = [
        _build_group(torch.tensor(members), lengths, starts, offsets, tables, block_size, device)
        for members in member_lists
        if members
    ]
    metadata = PagedAttentionMetadata(slot_mapping.to(device), groups, kv_caches, block_size)
    return metadata, positions


# Padded context positions that cost as much as one more SDPA call (gather, mask, launch).
_GROUP_OVERHEAD_POSITIONS = 2048


def split_by_context(ids: list[int], context_lens: list[int]) -> list[list[int]]:
    """Split decodes into groups of similar context length.

    A group pads every member to its longest context, so one group over contexts of 16 and 600
    tokens gathers and attends over twice the positions it needs. Sorted by length, the
    partition into contiguous runs minimising (padded positions + an overhead per group) is a
    small dynamic program: O(n^2) for n decodes, once per step.
    """
    if not ids:
        return []
    order = sorted(range(len(ids)), key=lambda i: context_lens[i])
    lens = [context_lens[i] for i in order]
    num = len(lens)
    # best_cost[j]: cheapest split of the j shortest; cut_at[j]: where its last group starts.
    best_cost = [0] + [0] * num
    cut_at = [0] * (num + 1)
    for end in range(1, num + 1):
        best_cost[end], cut_at[end] = min(
            (best_cost[start] + _GROUP_OVERHEAD_POSITIONS + (end - start) * lens[end - 1], start)
            for start in range(end)
        )
    groups: list[list[int]] = []
    end = num
    while end > 0:
        start = cut_at[end]
        groups.append([ids[order[i]] for i in range(start, end)])
        end = start
    return groups[::-1]


def _slots(tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slot of each position. tables (T, max_blocks): row t is position t's block table."""
    block_ids = torch.gather(tables, 1, (positions // block_size)[:, None]).squeeze(1)  # (T,)
    return block_ids * block_size + positions % block_size


def _build_group(
    members: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    offsets: torch.Tensor,
    tables: torch.Tensor,
    block_size: int,
    device: torch.device,
) -> AttentionGroup:
    group_lengths = lengths[members]  # (S,)
    group_starts = starts[members]
    context_lens = group_starts + group_lengths  # (S,)
    max_queries = int(group_lengths.max())
    max_context = int(context_lens.max())

    query_offsets = torch.arange(max_queries)[None, :]  # (1, Q)
    is_real_query = query_offsets < group_lengths[:, None]  # (S, Q)
    clamped = torch.minimum(query_offsets, group_lengths[:, None] - 1)  # (S, Q)
    query_index = offsets[members][:, None] + clamped
    query_positions = group_starts[:, None] + clamped

    num_blocks = -(-max_context // block_size)
    block_tables = tables[members, :num_blocks]  # (S, B); entries past a sequence's table are 0

    all_real = bool(is_real_query.all())
    return AttentionGroup(
        query_index=query_index.to(device),
        block_ids=block_tables.flatten().to(device),
        blocks_per_seq=num_blocks,
        query_positions=query_positions.to(device),
        context_lens=context_lens.to(device),
        valid_rows=None if all_real else torch.nonzero(is_real_query.flatten()).flatten().to(device),
        token_index=query_index[is_real_query].to(device),
    )
