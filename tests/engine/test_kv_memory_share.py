"""Shards that share one node's memory each plan their KV cache from their share of it."""

from __future__ import annotations

from pathlib import Path

from engine import EngineConfig
from engine.model_runner import ModelRunner


def test_a_half_share_of_memory_plans_about_half_the_blocks(llama_dir: Path) -> None:
    # A tiny fraction keeps the pool below the max_num_seqs x max_model_len cap, so memory decides.
    config = EngineConfig(model=str(llama_dir), kv_cache_memory_fraction=1e-4, max_num_seqs=4096)
    whole = ModelRunner(config).planned_kv_blocks
    half = ModelRunner(config, memory_share=0.5).planned_kv_blocks
    assert 0.45 < half / whole < 0.55
