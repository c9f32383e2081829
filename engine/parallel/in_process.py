"""The whole model in this process, and the forward-then-sample every executor's sampling shard
runs."""

from __future__ import annotations

import os

import torch
from transformers import GenerationConfig, PretrainedConfig

from engine.config import EngineConfig
from engine.model.model_runner import ModelRunner
from engine.model.sampler import Sampler, SamplingRow, score_prompt_tokens
from engine.outputs import ShardInfo
from engine.step_data import SampledTokens, SchedulerOutput

__all__ = ["InProcessExecutor", "sample_batch"]


def sample_batch(
    runner: ModelRunner, sampler: Sampler, batch: SchedulerOutput, hidden: torch.Tensor | None = None
) -> SampledTokens:
    """Run the batch's forward (on the last pipeline stage, from the previous stage's `hidden`
    state), sample the chunks that end a sequence's known tokens, and score the prompt tokens the
    batch asks logprobs of."""
    logits = runner.forward(batch, hidden)  # (N + M, V): N sampling chunks, then M prompt positions
    num_sampling = sum(chunk.sampling is not None for chunk in batch.chunks)
    prompt_logprobs = score_prompt_tokens(logits[num_sampling:], batch)
    logits = logits[:num_sampling]
    rows = [
        SamplingRow(
            chunk.sampling,
            chunk.seed,
            chunk.num_output_tokens,
            chunk.output_token_ids,
            chunk.prompt_token_ids,
            chunk.banned_token_ids,
            chunk.allowed_token_bitmask,
        )
        for chunk in batch.chunks
        if chunk.sampling is not None
    ]
    if not rows:
        return SampledTokens(token_ids=[], logprobs=[], top_logprobs=[], prompt_logprobs=prompt_logprobs)
    sampled = sampler.sample(logits, rows)
    sampled.prompt_logprobs = prompt_logprobs
    return sampled


class InProcessExecutor:
    """The whole model in this process (one shard: no tensor or pipeline parallelism)."""

    def __init__(self, config: EngineConfig) -> None:
        self.runner = ModelRunner(config)
        self.runner.allocate_kv_cache(self.runner.planned_kv_blocks)
        self.sampler = Sampler()
        self.model_config: PretrainedConfig = self.runner.model.config
        self.generation_config: GenerationConfig | None = self.runner.model.generation_config
        self.num_kv_blocks = self.runner.num_kv_blocks
        self.max_model_len = self.runner.max_model_len

    @property
    def num_in_flight(self) -> int:
        return 0  # a batch is done when execute returns

    def execute(self, batch: SchedulerOutput) -> tuple[SchedulerOutput, SampledTokens]:
        return batch, sample_batch(self.runner, self.sampler, batch)

    def shards(self) -> list[ShardInfo]:
        runner = self.runner
        return [
            ShardInfo(0, node_id=None, device=str(runner.device), weight_bytes=runner.weight_bytes, pid=os.getpid())
        ]

    def check_health(self) -> None:
        """Nothing to check: the model lives and dies with this process."""

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
