"""Runs a scheduled batch on the model and samples: the `execute` verb of a step.

Two executors share one interface: `InProcessExecutor` (the model in this process) and
`engine.tp_executor.TensorParallelExecutor` (one Ray actor per shard).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from transformers import GenerationConfig, PretrainedConfig

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.sampler import Sampler, SamplingRow
from engine.scheduler import SampledTokens, SchedulerOutput

__all__ = ["Executor", "InProcessExecutor", "ShardInfo", "create_executor", "sample_batch"]


@dataclass(frozen=True)
class ShardInfo:
    """Where one shard of the model lives and what it holds."""

    rank: int
    # Ray node id; None for an engine running in process outside Ray.
    node_id: str | None
    device: str
    # Weight bytes as stored on the device (quantized weights count their real size).
    weight_bytes: int
    # Process id on its node (for a profiler, or to find the shard among the node's processes).
    pid: int


class Executor(Protocol):
    model_config: PretrainedConfig
    generation_config: GenerationConfig | None
    num_kv_blocks: int
    max_model_len: int

    def execute(self, batch: SchedulerOutput) -> SampledTokens: ...

    def shards(self) -> list[ShardInfo]: ...

    def check_health(self) -> None: ...

    def close(self) -> None: ...


def create_executor(config: EngineConfig) -> Executor:
    if config.tensor_parallel_size == 1:
        return InProcessExecutor(config)
    from engine.tp_executor import TensorParallelExecutor  # imports Ray, which TP=1 never needs

    return TensorParallelExecutor(config)


def sample_batch(runner: ModelRunner, sampler: Sampler, batch: SchedulerOutput) -> SampledTokens:
    """Run the batch's forward and sample the chunks that end a sequence's known tokens."""
    logits = runner.forward(batch)  # (N, V), one row per sampling chunk
    rows = [
        SamplingRow(chunk.sampling, chunk.seed, chunk.num_output_tokens, chunk.output_token_ids)
        for chunk in batch.chunks
        if chunk.sampling is not None
    ]
    if not rows:
        return SampledTokens(token_ids=[], logprobs=[], top_logprobs=[])
    return sampler.sample(logits, rows)


class InProcessExecutor:
    """The model in this process (tensor_parallel_size == 1)."""

    def __init__(self, config: EngineConfig) -> None:
        self.runner = ModelRunner(config)
        self.runner.allocate_kv_cache(self.runner.planned_kv_blocks)
        self.sampler = Sampler()
        self.model_config: PretrainedConfig = self.runner.model.config
        self.generation_config: GenerationConfig | None = self.runner.model.generation_config
        self.num_kv_blocks = self.runner.num_kv_blocks
        self.max_model_len = self.runner.max_model_len

    def execute(self, batch: SchedulerOutput) -> SampledTokens:
        return sample_batch(self.runner, self.sampler, batch)

    def shards(self) -> list[ShardInfo]:
        runner = self.runner
        return [
            ShardInfo(0, node_id=None, device=str(runner.device), weight_bytes=runner.weight_bytes, pid=os.getpid())
        ]

    def check_health(self) -> None:
        """Nothing to check: the model lives and dies with this process."""

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
