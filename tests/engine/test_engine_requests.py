"""Request-level behaviour of LLMEngine: sampling, stopping, aborting, rejecting bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ContextLengthError, EngineConfig, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def engine(llama_dir: Path) -> LLMEngine:
    return LLMEngine(
        EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64, block_size=8, max_model_len=256)
    )


def run_alone(engine: LLMEngine, prompt: list[int] | str, params: SamplingParams) -> list[int]:
    return engine.generate([prompt], params)[0].token_ids


def test_seeded_sampling_is_reproducible_and_independent_of_batch(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = run_alone(engine, [11, 12, 13, 14], params)
    assert run_alone(engine, [11, 12, 13, 14], params) == alone
    batch_mates = [[20 + i] * (5 + 7 * i) for i in range(5)]
    mates_params = SamplingParams(max_tokens=30, temperature=0.8, ignore_eos=True)
    in_batch = engine.generate(
        [*batch_mates[:2], [11, 12, 13, 14], *batch_mates[2:]], [mates_params] * 2 + [params] + [mates_params] * 3
    )
    assert in_batch[2].token_ids == alone


def test_different_seeds_give_different_samples(engine: LLMEngine) -> None:
    outputs = {
        tuple(
            run_alone(engine, [30, 31, 32], SamplingParams(max_tokens=16, temperature=1.5, seed=seed, ignore_eos=True))
        )
        for seed in range(4)
    }
    assert len(outputs) == 4


def test_unseeded_requests_differ_by_request_id(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.5, ignore_eos=True)
    first, second = engine.generate([[40, 41, 42], [40, 41, 42]], params)
    assert first.token_ids != second.token_ids


def test_stop_string_cuts_text_and_finishes(engine: LLMEngine) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    full = engine.generate(["The quick brown fox"], greedy)[0]
    stop = full.text[5:8]
    assert stop and stop not in full.text[:5]
    stopped = engine.generate(
        ["The quick brown fox"], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert len(stopped.token_ids) < len(full.token_ids)


def test_stop_token_id_finishes_with_the_token_kept(engine: LLMEngine) -> None:
    greedy_tokens = run_alone(engine, [50, 51, 52], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    stop_token = greedy_tokens[4]
    first_index = greedy_tokens.index(stop_token)
    output = engine.generate(
        [[50, 51, 52]], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_token])
    )[0]
    assert output.finish_reason == "stop"
    assert output.token_ids == greedy_tokens[: first_index + 1]


def test_eos_stops_unless_ignored(engine: LLMEngine) -> None:
    eos = engine.tokenizer.eos_token_id
    greedy_tokens = run_alone(engine, [60, 61], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    engine.scheduler.eos_token_ids = {greedy_tokens[2], eos}
    try:
        stopped = engine.generate([[60, 61]], SamplingParams(max_tokens=10, temperature=0.0))[0]
        ignored = engine.generate([[60, 61]], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    finally:
        engine.scheduler.eos_token_ids = {eos}
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == greedy_tokens[: greedy_tokens.index(greedy_tokens[2]) + 1]
    assert ignored.token_ids == greedy_tokens


def test_text_prompt_streams_deltas_that_add_up(engine: LLMEngine) -> None:
    engine.add_request("stream", "Hello, world", SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    deltas: list[str] = []
    final = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            deltas.append(output.delta_text)
            final = output
    assert final is not None and final.finished
    assert "".join(deltas) == final.text
    assert final.text == engine.tokenizer.decode(final.token_ids, skip_special_tokens=True)
    assert final.timing.first_token is not None and final.timing.finish >= final.timing.first_token


def test_abort_frees_every_block(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"abort-{i}", [70 + i] * (10 + 9 * i), params)
    for _ in range(3):
        engine.step()
    assert engine.stats().kv_blocks_used > 0
    for i in range(4):
        assert engine.abort_request(f"abort-{i}")
    stats = engine.stats()
    assert (stats.kv_blocks_used, stats.num_running, stats.num_waiting) == (0, 0, 0)
    assert not engine.has_unfinished_requests()
    assert not engine.abort_request("abort-0")


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ("", SamplingParams(), "prompt"),
        ([], SamplingParams(), "prompt"),
        ([1, 2, 10**9], SamplingParams(), "prompt"),
        ([1, "a"], SamplingParams(), "prompt"),
        ([5] * 250, SamplingParams(max_tokens=10), "max_model_len"),
        # 64 blocks x 8 tokens = 512 slots, but max_model_len 256 caps it first; see the pool test.
    ],
)
def test_bad_input_is_rejected_naming_the_field(
    engine: LLMEngine, prompt: object, params: SamplingParams, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        engine.add_request("bad", prompt, params)  # type: ignore[arg-type]
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("max_tokens", {"max_tokens": -1}),
        ("temperature", {"temperature": -0.5}),
        ("top_p", {"top_p": 0.0}),
        ("top_p", {"top_p": 1.5}),
    ],
)
def test_bad_sampling_params_are_rejected_naming_the_field(field: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_request_that_can_never_fit_the_pool_is_rejected_at_once(llama_dir: Path) -> None:
    small = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=4, block_size=8))
    with pytest.raises(ValueError, match="KV blocks"):
        small.add_request("huge", [5] * 30, SamplingParams(max_tokens=8))
    assert not small.has_unfinished_requests()
    # 32 tokens + 1 generated needs exactly 4 blocks (the last token is never cached): it fits.
    assert len(small.generate([[5] * 32], SamplingParams(max_tokens=1))[0].token_ids) == 1


@pytest.mark.parametrize(
    ("prompt_length", "max_tokens", "message"),
    [
        (250, 10, r"max_tokens \(10\) must be <= max_model_len \(256\)"),  # 260 > max_model_len 256
        (30, 8, r"needs 5 KV blocks, more than the pool's 4"),  # 37 cached tokens > 4 blocks x 8
    ],
)
def test_too_long_request_raises_context_length_error(
    llama_dir: Path, prompt_length: int, max_tokens: int, message: str
) -> None:
    # max_model_len caps the first case; the 4-block pool (32 slots) the second.
    engine = LLMEngine(
        EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=4, block_size=8, max_model_len=256)
    )
    with pytest.raises(ContextLengthError, match=message) as error:
        engine.add_request("long", [5] * prompt_length, SamplingParams(max_tokens=max_tokens))
    assert isinstance(error.value, ValueError)
    assert not engine.has_unfinished_requests()


def test_other_bad_input_is_not_a_context_length_error(engine: LLMEngine) -> None:
    with pytest.raises(ValueError, match="prompt") as error:
        engine.add_request("bad", [1, 2, 10**9], SamplingParams())
    assert not isinstance(error.value, ContextLengthError)


def test_steps_whose_prompt_chunks_sample_nothing_run(llama_dir: Path) -> None:
    # A 4-token budget runs the 10-token prompt as chunks of 4, 4 and 2; only the last one samples.
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=16, max_num_batched_tokens=4))
    engine.add_request("chunked", list(range(20, 30)), SamplingParams(max_tokens=2, ignore_eos=True))
    assert (engine.step(), engine.step()) == ([], [])
    (output,) = engine.step()
    assert (len(output.token_ids), output.finished) == (1, False)


def test_duplicate_request_id_is_rejected(engine: LLMEngine) -> None:
    engine.add_request("twice", [1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("twice", [1, 2, 3], SamplingParams(max_tokens=2))
    engine.abort_request("twice")


def test_bad_request_does_not_disturb_others(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = run_alone(engine, [80, 81, 82], params)
    engine.add_request("good", [80, 81, 82], params)
    engine.step()
    with pytest.raises(ValueError):
        engine.add_request("bad", [], params)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens = output.token_ids
    assert tokens == expected


def test_generate_rejects_mismatched_params_and_queues_nothing(engine: LLMEngine) -> None:
    with pytest.raises(ValueError, match="params"):
        engine.generate([[1, 2], [3, 4]], [SamplingParams()])
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([[1, 2], []], SamplingParams())
    assert not engine.has_unfinished_requests()


def test_top_k_beyond_the_vocabulary_keeps_every_token(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, ignore_eos=True)
    huge_top_k = SamplingParams(max_tokens=6, temperature=1.0, seed=3, ignore_eos=True, top_k=10**20)
    assert run_alone(engine, [5, 6, 7], huge_top_k) == run_alone(engine, [5, 6, 7], params)


def test_each_output_reports_the_prompt_tokens_served_from_the_prefix_cache(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64, block_size=8))
    prompt = list(range(10, 31))  # 21 tokens: two full blocks of 8, then 5 more
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    (first,) = engine.generate([prompt], params)
    (again,) = engine.generate([prompt], params)
    (other,) = engine.generate([[40, 41, *prompt[2:]]], params)  # a different first block
    assert (first.num_cached_tokens, again.num_cached_tokens, other.num_cached_tokens) == (0, 16, 0)
