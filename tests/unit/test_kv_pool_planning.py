"""KV pool planning: a runner's share of memory decides its blocks, up to what its sequences use."""

from __future__ import annotations

import pytest

from engine import EngineConfig
from engine.model.model_runner import plan_num_kv_blocks

BLOCK_BYTES = 1024


def test_a_half_share_of_memory_plans_half_the_blocks() -> None:
    config = EngineConfig(model="m", kv_cache_memory_fraction=0.5, max_num_seqs=4096)
    whole = plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=2048, free_bytes=1000 * BLOCK_BYTES)
    half = plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=2048, free_bytes=500 * BLOCK_BYTES)
    assert (whole, half) == (500, 250)


def test_the_pool_is_capped_at_what_every_sequence_at_full_length_uses() -> None:
    config = EngineConfig(model="m", block_size=16, max_num_seqs=2)
    assert plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=10**12) == 2 * 7


def test_a_fixed_pool_size_wins_over_memory() -> None:
    config = EngineConfig(model="m", num_kv_blocks=3)
    assert plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=0) == 3


def test_memory_for_no_block_is_refused_naming_the_fraction() -> None:
    config = EngineConfig(model="m", kv_cache_memory_fraction=0.1)
    with pytest.raises(ValueError, match="kv_cache_memory_fraction=0.1"):
        plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=BLOCK_BYTES)
