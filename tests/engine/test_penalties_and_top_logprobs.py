"""Presence/frequency penalties and top logprobs against Hugging Face `generate` on the same weights.

The penalties' reference is `generate` with a LogitsProcessor applying OpenAI's formula over the
generated tokens; top logprobs are compared with the top-k of `generate`'s raw logits.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine.hf_reference import hf_greedy, hf_top_logprobs

LOGPROB_TOLERANCE = 1e-4

# (frequency_penalty, presence_penalty) per prompt; the (0, 0) rows share the batch unpenalized.
PENALTIES = [(0.0, 1.5), (2.0, 0.0), (0.0, 0.0), (0.7, 0.4), (-1.0, 0.5), (0.0, 0.0)]
PROMPT_LENGTHS = [9, 14, 6, 11, 5, 8]
MAX_TOKENS = [40, 40, 34, 40, 40, 12]

ENGINE_SETUPS = {
    "continuous": {"num_kv_blocks": 128},
    # A 7-token budget splits prompts into chunks that do not sample.
    "chunked": {"num_kv_blocks": 128, "max_num_batched_tokens": 7},
    # 16 blocks of 4 tokens cannot hold these sequences at once: running ones get preempted.
    "preempting": {"num_kv_blocks": 16, "block_size": 4, "enable_prefix_caching": False},
}


def random_prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 500) for _ in range(n)] for n in lengths]


def assert_top_logprobs_close(actual: list[list[tuple[int, float]]], expected: list[list[tuple[int, float]]]) -> None:
    assert len(actual) == len(expected)
    for actual_step, expected_step in zip(actual, expected):
        assert [token_id for token_id, _ in actual_step] == [token_id for token_id, _ in expected_step]
        assert max(abs(a - e) for (_, a), (_, e) in zip(actual_step, expected_step)) < LOGPROB_TOLERANCE


@pytest.mark.parametrize(
    ("architecture", "setup"),
    [("llama", setup) for setup in ENGINE_SETUPS] + [("qwen2", "continuous"), ("mistral", "continuous")],
)
def test_greedy_with_penalties_matches_hf_with_a_penalty_logits_processor(
    tiny_model_dirs: dict[str, Path], architecture: str, setup: str
) -> None:
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", **ENGINE_SETUPS[setup]))
    prompts = random_prompts(seed=11, lengths=PROMPT_LENGTHS)
    params = [
        SamplingParams(
            max_tokens=n,
            temperature=0.0,
            ignore_eos=True,
            frequency_penalty=frequency,
            presence_penalty=presence,
            logprobs=True,
            top_logprobs=5,
        )
        for n, (frequency, presence) in zip(MAX_TOKENS, PENALTIES)
    ]

    outputs = engine.generate(prompts, params)

    num_changed = 0
    for prompt, n, (frequency, presence), output in zip(prompts, MAX_TOKENS, PENALTIES, outputs):
        penalties = {"frequency_penalty": frequency, "presence_penalty": presence}
        expected_tokens, expected_logprobs = hf_greedy(model_dir, prompt, n, **penalties)
        assert output.token_ids == expected_tokens
        # Reported logprobs stay those of the raw logits, penalties or not.
        assert max(abs(a - b) for a, b in zip(output.logprobs, expected_logprobs)) < LOGPROB_TOLERANCE
        assert_top_logprobs_close(output.top_logprobs, hf_top_logprobs(model_dir, prompt, n, 5, **penalties))
        num_changed += expected_tokens != hf_greedy(model_dir, prompt, n)[0]
    # Otherwise the comparison proves little: on these weights, three of the four penalized rows
    # repeat a token within their max_tokens, which the penalties then steer away from (or toward).
    assert num_changed >= 3
    if setup == "preempting":
        assert engine.stats().num_preemptions > 0


def test_seeded_sampling_with_top_k_one_and_penalties_equals_penalized_greedy(llama_dir: Path) -> None:
    """Penalties steer random rows too: with top_k=1 the draw is the penalized argmax."""
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64))
    prompt = random_prompts(seed=12, lengths=[10])[0]
    params = SamplingParams(max_tokens=24, temperature=0.8, top_k=1, seed=3, ignore_eos=True, frequency_penalty=1.0)
    (output,) = engine.generate([prompt], params)
    assert output.token_ids == hf_greedy(llama_dir, prompt, 24, frequency_penalty=1.0)[0]


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_top_logprobs_match_the_top_of_hf_raw_logits(tiny_model_dirs: dict[str, Path], architecture: str) -> None:
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(
        EngineConfig(model=str(model_dir), dtype="float32", num_kv_blocks=128, max_num_batched_tokens=16)
    )
    num_top = [1, 5, 20, 0, 3, 20]
    max_tokens = [12, 5, 20, 8, 16, 3]
    prompts = random_prompts(seed=13, lengths=[3, 41, 17, 64, 9, 26])
    params = [
        SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=k)
        for n, k in zip(max_tokens, num_top)
    ]

    outputs = engine.generate(prompts, params)

    for prompt, n, k, output in zip(prompts, max_tokens, num_top, outputs):
        if k == 0:
            assert output.top_logprobs == []
            continue
        assert_top_logprobs_close(output.top_logprobs, hf_top_logprobs(model_dir, prompt, n, k))
        # Greedy: each step's chosen token is its most likely one.
        assert [step[0][0] for step in output.top_logprobs] == output.token_ids


def test_streamed_top_logprob_deltas_add_up_to_the_full_list(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64))
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=5, ignore_eos=True, logprobs=True, top_logprobs=4)
    engine.add_request("stream", [21, 22, 23], params)
    streamed: list[list[tuple[int, float]]] = []
    final = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            assert len(output.new_top_logprobs) == len(output.new_token_ids)
            streamed += output.new_top_logprobs
            final = output
    assert final is not None and final.finished
    assert streamed == final.top_logprobs
    assert len(final.top_logprobs) == 6 and all(len(step) == 4 for step in final.top_logprobs)
