"""The engine's greedy tokens and logprobs equal Hugging Face `generate` on the same weights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine.hf_reference import hf_greedy

LOGPROB_TOLERANCE = 1e-4


def mixed_batch(seed: int, vocab_low: int = 10, vocab_high: int = 500) -> tuple[list[list[int]], list[int]]:
    """Prompts of mixed lengths with mixed max_tokens."""
    rng = random.Random(seed)
    lengths = [3, 41, 17, 64, 9, 26]
    max_tokens = [12, 5, 20, 8, 16, 3]
    prompts = [[rng.randrange(vocab_low, vocab_high) for _ in range(n)] for n in lengths]
    return prompts, max_tokens


def assert_matches_hf(model_dir: Path, engine: LLMEngine, prompts: list[list[int]], max_tokens: list[int]) -> None:
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=True) for n in max_tokens]
    outputs = engine.generate(prompts, params)
    for prompt, n, output in zip(prompts, max_tokens, outputs):
        expected_tokens, expected_logprobs = hf_greedy(model_dir, prompt, n)
        assert output.token_ids == expected_tokens
        assert output.finish_reason == "length"
        assert max(abs(a - b) for a, b in zip(output.logprobs, expected_logprobs)) < LOGPROB_TOLERANCE


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("scheduling", ["continuous", "static", "request"])
def test_greedy_batch_matches_hf(tiny_model_dirs: dict[str, Path], architecture: str, scheduling: str) -> None:
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", scheduling=scheduling, num_kv_blocks=128))
    prompts, max_tokens = mixed_batch(seed=1)
    assert_matches_hf(model_dir, engine, prompts, max_tokens)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_chunked_prefill_matches_hf(tiny_model_dirs: dict[str, Path], architecture: str) -> None:
    """A 7-token budget splits every long prompt into chunks and mixes chunks with decodes."""
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", max_num_batched_tokens=7, num_kv_blocks=128))
    prompts, max_tokens = mixed_batch(seed=2)
    assert_matches_hf(model_dir, engine, prompts, max_tokens)
    assert engine.stats().num_prompt_tokens_computed == sum(len(p) for p in prompts)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_prefix_cache_hits_match_hf(tiny_model_dirs: dict[str, Path], architecture: str) -> None:
    model_dir = tiny_model_dirs[architecture]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", block_size=8, num_kv_blocks=128))
    rng = random.Random(3)
    shared = [rng.randrange(10, 500) for _ in range(37)]
    prompts = [shared + [rng.randrange(10, 500) for _ in range(n)] for n in (1, 9, 20)]
    assert_matches_hf(model_dir, engine, [shared + [7]], [4])
    hits_before = engine.stats().prefix_cache_hit_tokens
    assert_matches_hf(model_dir, engine, prompts, [10, 6, 12])
    # The 37-token shared prefix holds 4 full blocks of 8: every later prompt reuses them.
    assert engine.stats().prefix_cache_hit_tokens - hits_before == 3 * 32


def test_requests_admitted_together_share_a_prefix_and_match_hf(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", block_size=8, num_kv_blocks=128))
    rng = random.Random(7)
    shared = [rng.randrange(10, 500) for _ in range(37)]
    prompts = [shared + [rng.randrange(10, 500) for _ in range(n)] for n in (2, 5, 11)]
    assert_matches_hf(llama_dir, engine, prompts, [6, 9, 4])
    # One step admits all three; the second and third reuse the first's 4 full prefix blocks.
    assert engine.stats().prefix_cache_hit_tokens == 2 * 32
    assert engine.stats().num_prompt_tokens_computed == sum(len(p) for p in prompts) - 2 * 32


@pytest.mark.parametrize("scheduling", ["continuous", "static"])
def test_preempted_sequences_resume_with_identical_tokens(tiny_model_dirs: dict[str, Path], scheduling: str) -> None:
    model_dir = tiny_model_dirs["llama"]
    # 12 blocks of 4 tokens cannot hold these sequences at once: running ones get preempted.
    engine = LLMEngine(
        EngineConfig(
            model=str(model_dir),
            dtype="float32",
            block_size=4,
            num_kv_blocks=12,
            scheduling=scheduling,
            enable_prefix_caching=False,
        )
    )
    rng = random.Random(4)
    prompts = [[rng.randrange(10, 500) for _ in range(n)] for n in (9, 14, 6, 11)]
    assert_matches_hf(model_dir, engine, prompts, [30, 20, 34, 25])
    assert engine.stats().num_preemptions > 0
    assert engine.stats().kv_blocks_used == 0


def test_preemption_with_prefix_cache_matches_hf(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", block_size=4, num_kv_blocks=14))
    rng = random.Random(5)
    shared = [rng.randrange(10, 500) for _ in range(8)]
    prompts = [shared + [rng.randrange(10, 500) for _ in range(n)] for n in (3, 7, 1, 5)]
    assert_matches_hf(llama_dir, engine, prompts, [28, 22, 30, 18])
    assert engine.stats().num_preemptions > 0


@pytest.mark.parametrize("scheduling", ["continuous", "static", "request"])
def test_bfloat16_engine_runs_every_policy(llama_dir: Path, scheduling: str) -> None:
    """Lower precision is not compared token by token; it must run and finish by length."""
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="bfloat16", scheduling=scheduling, num_kv_blocks=64))
    prompts, max_tokens = mixed_batch(seed=6)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in max_tokens]
    outputs = engine.generate(prompts, params)
    assert [len(o.token_ids) for o in outputs] == max_tokens
