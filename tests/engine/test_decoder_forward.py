"""The engine's own decoder loop computes the logits Hugging Face's forward does, step after step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import EngineConfig, SamplingParams
from engine.model.model_runner import ModelRunner
from engine.step_data import ScheduledChunk, SchedulerOutput

GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


def chunk(request_id: str, token_ids: list[int], start: int, block_ids: list[int]) -> ScheduledChunk:
    return ScheduledChunk(request_id, token_ids, start, block_ids, GREEDY, seed=0, num_output_tokens=0)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_own_forward_matches_the_models_forward_on_prefill_then_decode(
    tiny_model_dirs: dict[str, Path], architecture: str
) -> None:
    runner = ModelRunner(EngineConfig(model=str(tiny_model_dirs[architecture]), dtype="float32", block_size=4))
    runner.allocate_kv_cache(16)
    assert runner.own_forward
    prefill = SchedulerOutput([chunk("a", [5, 6, 7, 8, 9, 10], 0, [0, 1]), chunk("b", [11, 12, 13], 0, [2])])
    decode = SchedulerOutput([chunk("a", [20], 6, [0, 1]), chunk("b", [21], 3, [2])])
    logits = {}
    for own in (True, False):
        runner.own_forward = own
        # Each pass writes the same keys and values into the same slots, so both see the same cache.
        logits[own] = [runner.forward(prefill), runner.forward(decode)]
    for ours, theirs in zip(logits[True], logits[False], strict=True):
        assert ours.shape == theirs.shape == (2, runner.model.config.vocab_size)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
