"""Prompt logprobs against Hugging Face's forward on the same weights (float32): every prompt
token's logprob given those before it, and the top alternatives, with chunked prefill, preemption
and a prefix another request cached; max_tokens=0 scores a prompt without generating."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import EngineConfig, LLMEngine, SamplingParams

TOLERANCE = 1e-4
NUM_TOP = 3
SETUPS = {
    "continuous": {"num_kv_blocks": 128},
    # A 7-token budget splits the prompts into chunks; each chunk scores its own positions.
    "chunked": {"num_kv_blocks": 128, "max_num_batched_tokens": 7},
    # 12 blocks of 4 tokens cannot hold these sequences together: some are preempted and recomputed.
    "preempting": {"num_kv_blocks": 12, "block_size": 4},
}


@lru_cache(maxsize=2)
def hf_model(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_prompt_logprobs(model_dir: Path, prompt: list[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    with torch.inference_mode():
        logits = hf_model(model_dir)(torch.tensor([prompt])).logits[0]  # (P, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scored = []
    for position in range(len(prompt) - 1):
        values, ids = logprobs[position].topk(NUM_TOP)
        scored.append((logprobs[position, prompt[position + 1]].item(), list(zip(ids.tolist(), values.tolist()))))
    return scored


def assert_close(actual: list[tuple[float, list[tuple[int, float]]] | None] | None, expected: list) -> None:
    assert actual is not None and actual[0] is None and len(actual) == len(expected) + 1
    for got, want in zip(actual[1:], expected):
        assert got is not None
        assert abs(got[0] - want[0]) < TOLERANCE
        assert [token for token, _ in got[1]] == [token for token, _ in want[1]]
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[1], want[1])) < TOLERANCE


@pytest.mark.parametrize("setup", list(SETUPS))
def test_prompt_logprobs_equal_hf_forward_and_leave_the_generated_tokens_unchanged(llama_dir: Path, setup: str) -> None:
    rng = random.Random(5)
    shared = [rng.randrange(10, 500) for _ in range(12)]
    prompts = [shared + [rng.randrange(10, 500) for _ in range(n)] for n in (3, 9, 5)]
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", enable_prefix_caching=True, **SETUPS[setup]))
    plain = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    scoring = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, prompt_logprobs=NUM_TOP)
    # The first request caches the shared prefix; the scored ones must still score it.
    baseline = engine.generate(prompts, plain)
    preemptions_before = engine.stats().num_preemptions
    scored = engine.generate(prompts, scoring)
    for prompt, base, output in zip(prompts, baseline, scored):
        assert output.token_ids == base.token_ids
        assert_close(output.prompt_logprobs, hf_prompt_logprobs(llama_dir, prompt))
    if setup == "preempting":
        assert engine.stats().num_preemptions > preemptions_before  # the scored run itself preempted


def test_max_tokens_zero_scores_the_prompt_without_generating(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64))
    prompt = list(range(40, 60))
    [output] = engine.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))
    assert (output.token_ids, output.text, output.finish_reason) == ([], "", "length")
    expected = hf_prompt_logprobs(llama_dir, prompt)
    assert output.prompt_logprobs is not None
    assert [entry[0] for entry in output.prompt_logprobs[1:]] == pytest.approx([e[0] for e in expected], abs=TOLERANCE)
    assert all(entry[1] == [] for entry in output.prompt_logprobs[1:])
    assert engine.stats().kv_blocks_used == 0


def test_an_engine_process_hands_over_the_same_prompt_logprobs(llama_dir: Path) -> None:
    import asyncio

    from engine import AsyncLLMEngine

    prompt = list(range(70, 85))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, prompt_logprobs=NUM_TOP)

    async def scenario() -> list:
        engine = AsyncLLMEngine(
            EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64), engine_process=True, num_threads=1
        )
        await engine.start(timeout_s=120)
        try:
            outputs = [output async for output in engine.generate("r", prompt, params)]
        finally:
            await engine.shutdown()
        assert sum(output.new_prompt_logprobs is not None for output in outputs) == 1
        return outputs[-1].prompt_logprobs

    assert_close(asyncio.run(scenario()), hf_prompt_logprobs(llama_dir, prompt))


def test_a_step_scores_at_most_its_share_of_positions_and_the_scores_stay_exact(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.core import scheduler

    monkeypatch.setattr(scheduler, "MAX_SCORED_POSITIONS_PER_STEP", 5)
    rng = random.Random(9)
    prompts = [[rng.randrange(10, 500) for _ in range(n)] for n in (17, 11, 23)]
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=128))
    scored_per_step: list[int] = []
    execute = engine.executor.execute

    def counting(batch: object) -> object:
        scored_per_step.append(sum(len(chunk.prompt_logprob_targets) for chunk in batch.chunks))  # type: ignore[attr-defined]
        return execute(batch)  # type: ignore[arg-type]

    engine.executor.execute = counting  # type: ignore[method-assign]
    params = [SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True, prompt_logprobs=NUM_TOP)] * 2
    mixed = params + [SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)]
    outputs = engine.generate(prompts, mixed)
    assert max(scored_per_step) == 5 and sum(scored_per_step) == (17 - 1) + (11 - 1)
    for prompt, output in zip(prompts[:2], outputs[:2]):
        assert_close(output.prompt_logprobs, hf_prompt_logprobs(llama_dir, prompt))
    assert outputs[2].prompt_logprobs is None and outputs[2].num_generated_tokens == 3
