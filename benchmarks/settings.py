"""What every runner gets and gives back: the benchmark's settings and the result of one timed run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchSettings", "RunResult"]


@dataclass(frozen=True)
class BenchSettings:
    model_dir: Path
    threads: int
    repeats: int
    # A row stops repeating once another run would take it past this many seconds.
    max_row_seconds: float
    # Most requests in one batch or step, for every batched system: hf-static's batches,
    # hf-continuous, and the engine's `max_num_seqs` in all its modes (so static and continuous
    # differ by the scheduling flag alone).
    batch_size: int
    # Token budget of one step for hf-continuous and the engine.
    max_batched_tokens: int
    # KV pool of hf-continuous and the engine, in blocks of `block_size` tokens.
    num_kv_blocks: int
    block_size: int
    # Weights and activations of every system: "float32", "bfloat16" or "float16".
    dtype: str = "float32"


@dataclass(frozen=True)
class RunResult:
    """One timed run of one system on one workload."""

    seconds: float
    output_tokens: int
    # Engine counters over the run; None for the transformers baselines.
    prompt_tokens_computed: int | None = None
    mean_kv_waste: float | None = None
    prefix_hit_rate: float | None = None
