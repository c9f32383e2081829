"""Runs a scheduled batch on the model and samples: the `execute` verb of a step."""

from __future__ import annotations

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.sampler import Sampler, SamplingRow
from engine.scheduler import SampledTokens, SchedulerOutput

__all__ = ["InProcessExecutor"]


class InProcessExecutor:
    """The model in this process (tensor_parallel_size == 1)."""

    def __init__(self, config: EngineConfig) -> None:
        self.runner = ModelRunner(config)
        self.sampler = Sampler()

    @property
    def num_kv_blocks(self) -> int:
        return self.runner.num_kv_blocks

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def execute(self, batch: SchedulerOutput) -> SampledTokens:
        logits = self.runner.forward(batch)  # (N, V), one row per sampling chunk
        rows = [
            SamplingRow(chunk.sampling, chunk.seed, chunk.num_output_tokens, chunk.output_token_ids)
            for chunk in batch.chunks
            if chunk.sampling is not None
        ]
        if not rows:
            return SampledTokens(token_ids=[], logprobs=[], top_logprobs=[])
        return self.sampler.sample(logits, rows)
