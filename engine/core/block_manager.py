"""Paged KV-cache bookkeeping: fixed-size blocks, block tables, ref counts and prefix caching.

Plain Python, no torch: the model runner owns the tensors, this owns which block holds what.

    block table of a sequence            KV pool (num_blocks x block_size slots)
    [ 7, 2, 9 ]  ──────────────────────▶ block 7: tokens  0..15  (full, hashed, maybe shared)
                                          block 2: tokens 16..31  (full, hashed)
                                          block 9: tokens 32..37  (partial, private)

A full block is keyed by a chained hash: hash(parent block's hash, this block's token ids), so
equal keys mean equal prefixes. The hash is blake2b, stable across processes (unlike `hash`).
A block whose ref count drops to zero goes to the free list but keeps its key: a later request
with the same prefix takes it back. Allocation takes the least recently freed block first, so
recently used prefixes survive longest.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from engine.core.sequence import Sequence

__all__ = ["BlockManager", "hash_block_tokens"]


def hash_block_tokens(parent_hash: bytes | None, token_ids: list[int]) -> bytes:
    """The key of a full block: depends on every token before it and in it."""
    payload = (parent_hash or b"") + struct.pack(f"<{len(token_ids)}q", *token_ids)
    return hashlib.blake2b(payload, digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts: list[int] = [0] * num_blocks
        # Key of each block whose content is a full, hashed block; None for partial or stale ones.
        self._block_hashes: list[bytes | None] = [None] * num_blocks
        self._block_by_hash: dict[bytes, int] = {}
        # Blocks with ref count zero, least recently freed first.
        self._free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        # Chained keys of each running sequence's full blocks, in block order.
        self._seq_hashes: dict[str, list[bytes]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the longest prefix of `seq`'s tokens (no state changes).

        At least one token is left uncomputed, since the step that computes it samples the next.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        block_ids: list[int] = []
        parent: bytes | None = None
        for index in range(max_blocks):
            start = index * self.block_size
            key = hash_block_tokens(parent, seq.token_slice(start, start + self.block_size))
            block_id = self._block_by_hash.get(key)
            if block_id is None:
                break
            block_ids.append(block_id)
            parent = key
        return block_ids

    def can_admit(self, cached_block_ids: list[int], num_tokens: int) -> bool:
        """Whether a sequence can take `cached_block_ids` and blocks for `num_tokens` tokens."""
        num_new = max(0, self.blocks_needed(num_tokens) - len(cached_block_ids))
        num_revived = sum(1 for b in cached_block_ids if self._ref_counts[b] == 0)
        return num_new + num_revived <= self.num_free_blocks

    def admit(self, seq: Sequence, cached_block_ids: list[int]) -> None:
        """Give `seq` the cached prefix blocks; it starts computing after them."""
        assert not seq.block_ids, f"{seq.request_id} already holds blocks"
        for block_id in cached_block_ids:
            if self._ref_counts[block_id] == 0:
                del self._free_blocks[block_id]
            self._ref_counts[block_id] += 1
        seq.block_ids = list(cached_block_ids)
        seq.num_computed_tokens = len(cached_block_ids) * self.block_size
        self._seq_hashes[seq.request_id] = [self._block_hashes[b] for b in cached_block_ids]

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_ids)
        return needed <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow `seq`'s block table to hold `num_new_tokens` more tokens, and key the blocks
        those tokens fill.

        Keys are published when the step is scheduled, before it runs, so a request admitted in
        the same step can already share them: within each layer, the step writes every new
        token's keys and values before any sequence reads its context.
        """
        num_tokens = seq.num_computed_tokens + num_new_tokens
        needed = self.blocks_needed(num_tokens) - len(seq.block_ids)
        for _ in range(needed):
            seq.block_ids.append(self._take_free_block())
        if self.enable_prefix_caching:
            self._key_full_blocks(seq, num_tokens)

    def _key_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        hashes = self._seq_hashes.setdefault(seq.request_id, [])
        num_full = num_tokens // self.block_size
        while len(hashes) < num_full:
            index = len(hashes)
            start = index * self.block_size
            parent = hashes[-1] if hashes else None
            key = hash_block_tokens(parent, seq.token_slice(start, start + self.block_size))
            hashes.append(key)
            block_id = seq.block_ids[index]
            if key not in self._block_by_hash and self._block_hashes[block_id] is None:
                self._block_hashes[block_id] = key
                self._block_by_hash[key] = block_id

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; its blocks stay cached until reused. Tail blocks go first,
        so a shared prefix outlives the private suffixes that hang off it."""
        for block_id in reversed(seq.block_ids):
            self._ref_counts[block_id] -= 1
            assert self._ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self._ref_counts[block_id] == 0:
                self._free_blocks[block_id] = None
        seq.block_ids = []
        seq.num_computed_tokens = 0
        self._seq_hashes.pop(seq.request_id, None)

    def _take_free_block(self) -> int:
        block_id, _ = self._free_blocks.popitem(last=False)
        stale_key = self._block_hashes[block_id]
        if stale_key is not None:
            # The block is overwritten: its old prefix is no longer cached.
            del self._block_by_hash[stale_key]
            self._block_hashes[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    def num_tokens_stored(self, sequences: list[Sequence]) -> int:
        """Tokens whose KV sits in used blocks, counting each shared block once."""
        filled: dict[int, int] = {}
        for seq in sequences:
            for index, block_id in enumerate(seq.block_ids):
                in_block = min(self.block_size, max(0, seq.num_computed_tokens - index * self.block_size))
                filled[block_id] = max(filled.get(block_id, 0), in_block)
        return sum(filled.values())
