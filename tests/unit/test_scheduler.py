"""Scheduler: token budget, chunked prefill, admission per policy, preemption, finishing, counters."""

from __future__ import annotations

import pytest

from engine.config import EngineConfig
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence, SequenceStatus
from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams
from engine.step_data import SampledTokens, SchedulerOutput

BLOCK_SIZE = 4
EOS = 2
# What the fake model samples unless a test says otherwise: neither EOS nor a stop token.
DEFAULT_TOKEN = 7


def make_scheduler(
    *,
    num_kv_blocks: int = 64,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    scheduling: str = "continuous",
    enable_prefix_caching: bool = False,
    max_model_len: int = 1024,
) -> Scheduler:
    config = EngineConfig(
        model="unused",
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        scheduling=scheduling,
        enable_prefix_caching=enable_prefix_caching,
    )
    return Scheduler(config, num_kv_blocks=num_kv_blocks, max_model_len=max_model_len, eos_token_ids={EOS})


def make_seq(request_id: str, prompt: list[int], **params: object) -> Sequence:
    return Sequence(request_id=request_id, prompt_token_ids=list(prompt), params=SamplingParams(**params), seed=0)


def prompt_of(length: int, first: int = 100) -> list[int]:
    return list(range(first, first + length))


def step(scheduler: Scheduler, tokens: dict[str, int] | None = None) -> SchedulerOutput:
    """Schedules one step and feeds back one token per sampling chunk (`tokens[request_id]` or
    DEFAULT_TOKEN)."""
    tokens = tokens or {}
    output = scheduler.schedule()
    sampled = [tokens.get(chunk.request_id, DEFAULT_TOKEN) for chunk in output.chunks if chunk.sampling is not None]
    no_top_logprobs: list[list[tuple[int, float]]] = [[] for _ in sampled]
    scheduler.update(output, SampledTokens(sampled, logprobs=[0.0] * len(sampled), top_logprobs=no_top_logprobs))
    return output


def chunk_ids(output: SchedulerOutput) -> list[str]:
    return [chunk.request_id for chunk in output.chunks]


def run_to_completion(scheduler: Scheduler, max_steps: int = 200) -> list[SchedulerOutput]:
    outputs: list[SchedulerOutput] = []
    while scheduler.has_unfinished():
        assert len(outputs) < max_steps, "scheduler made no progress"
        outputs.append(step(scheduler))
    return outputs


# ----- continuous ------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [5, 16, 33])
def test_token_budget_is_respected_every_step(budget: int) -> None:
    scheduler = make_scheduler(max_num_batched_tokens=budget)
    prompt_lengths = [13, 7, 3, 20, 1]
    seqs = [make_seq(f"r{i}", prompt_of(n, 100 * i), max_tokens=3) for i, n in enumerate(prompt_lengths)]
    for seq in seqs:
        scheduler.add(seq)

    outputs = run_to_completion(scheduler)

    assert outputs[0].num_batched_tokens == min(budget, sum(prompt_lengths))
    assert all(0 < output.num_batched_tokens <= budget for output in outputs)
    assert all(seq.num_output_tokens == 3 for seq in seqs)


def test_long_prompt_is_chunked_and_samples_only_on_the_last_chunk() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    prompt = prompt_of(20)
    seq = make_seq("a", prompt, max_tokens=2)
    scheduler.add(seq)

    chunks = [step(scheduler).chunks[0] for _ in range(3)]

    assert [chunk.start_position for chunk in chunks] == [0, 8, 16]
    assert [chunk.token_ids for chunk in chunks] == [prompt[0:8], prompt[8:16], prompt[16:20]]
    assert [chunk.sampling is not None for chunk in chunks] == [False, False, True]
    assert all(chunk.block_ids == seq.block_ids[: len(chunk.block_ids)] for chunk in chunks)
    assert [len(chunk.block_ids) for chunk in chunks] == [2, 4, 5]
    assert seq.output_token_ids == [DEFAULT_TOKEN]

    decode = step(scheduler).chunks[0]
    assert (decode.token_ids, decode.start_position, decode.sampling is not None) == ([DEFAULT_TOKEN], 20, True)


def test_prefill_and_decode_share_a_step() -> None:
    scheduler = make_scheduler()
    scheduler.add(make_seq("a", prompt_of(4), max_tokens=4))
    step(scheduler)
    scheduler.add(make_seq("b", prompt_of(6, 200), max_tokens=4))

    output = step(scheduler)

    decode, prefill = output.chunks
    assert (decode.request_id, decode.token_ids, decode.start_position) == ("a", [DEFAULT_TOKEN], 4)
    assert (prefill.request_id, prefill.token_ids, prefill.start_position) == ("b", prompt_of(6, 200), 0)
    assert decode.sampling is not None and prefill.sampling is not None


@pytest.mark.parametrize("max_num_seqs", [1, 2, 3])
def test_max_num_seqs_is_respected(max_num_seqs: int) -> None:
    scheduler = make_scheduler(max_num_seqs=max_num_seqs)
    for i in range(5):
        scheduler.add(make_seq(f"r{i}", prompt_of(3, 100 * i), max_tokens=2))

    outputs: list[SchedulerOutput] = []
    while scheduler.has_unfinished():
        outputs.append(step(scheduler))
        assert len(scheduler.running) <= max_num_seqs

    assert len(outputs[0].chunks) == max_num_seqs
    assert all(len(output.chunks) <= max_num_seqs for output in outputs)


def test_waiting_sequences_join_as_soon_as_a_running_one_finishes() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    scheduler.add(make_seq("a", prompt_of(3), max_tokens=1))
    scheduler.add(make_seq("b", prompt_of(3, 200), max_tokens=5))
    scheduler.add(make_seq("c", prompt_of(3, 300), max_tokens=5))

    first = step(scheduler)
    second = step(scheduler)

    assert chunk_ids(first) == ["a", "b"]
    assert chunk_ids(second) == ["b", "c"]  # c joins while b is still decoding


def test_finished_sequences_leave_and_free_their_blocks() -> None:
    scheduler = make_scheduler()
    short = make_seq("short", prompt_of(6), max_tokens=1)
    long = make_seq("long", prompt_of(6, 200), max_tokens=4)
    scheduler.add(short)
    scheduler.add(long)

    step(scheduler)

    assert short.status is SequenceStatus.FINISHED and short.finish_reason == "length"
    assert short.block_ids == []
    assert scheduler.running == [long]
    assert "short" not in scheduler.sequences
    assert scheduler.block_manager.num_used_blocks == len(long.block_ids) == 2
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_used_blocks == 0
    assert not scheduler.running and not scheduler.waiting and not scheduler.sequences


def test_preemption_evicts_the_newest_sequence_and_resumes_it_by_recompute() -> None:
    # 4 blocks: `a` (8 tokens), `b` and `c` (2 tokens each) fill the pool; `d` waits for a slot.
    scheduler = make_scheduler(num_kv_blocks=4, max_num_seqs=3)
    a = make_seq("a", prompt_of(8), max_tokens=3)
    b = make_seq("b", [20, 21], max_tokens=3)
    c = make_seq("c", [30, 31], max_tokens=3)
    d = make_seq("d", [50, 51], max_tokens=1)
    for seq in (a, b, c, d):
        scheduler.add(seq)
    step(scheduler, {"c": 40})
    assert scheduler.block_manager.num_free_blocks == 0
    prompt_tokens_before = scheduler.num_prompt_tokens_computed

    # `a`, the oldest, needs a third block: `c`, the newest, is evicted.
    preempting = step(scheduler)

    assert preempting.preempted_ids == ["c"]
    assert chunk_ids(preempting) == ["a", "b"]
    assert scheduler.num_preemptions == 1
    assert c.status is SequenceStatus.WAITING
    assert (c.block_ids, c.num_computed_tokens) == ([], 0)
    assert list(scheduler.waiting) == [c, d]
    assert scheduler.running == [a, b]
    assert scheduler.block_manager.num_used_blocks == len(a.block_ids) + len(b.block_ids) == 4

    assert chunk_ids(step(scheduler)) == ["a", "b"]  # both finish and free their blocks
    resumed = step(scheduler, {"c": 41})

    assert chunk_ids(resumed) == ["c", "d"]
    recompute = resumed.chunks[0]
    assert (recompute.token_ids, recompute.start_position) == ([30, 31, 40], 0)
    assert recompute.sampling is not None
    assert recompute.num_output_tokens == 1
    assert c.output_token_ids == [40, 41]
    assert scheduler.num_prompt_tokens_computed == prompt_tokens_before + 3 + 2  # c's recompute + d's prompt
    assert scheduler.num_preemptions == 1


def test_sampling_chunks_of_penalized_requests_carry_their_generated_tokens() -> None:
    # Budget 5: `p`'s 7-token prompt runs as a 5-token chunk that does not sample, then the rest.
    scheduler = make_scheduler(max_num_batched_tokens=5)
    scheduler.add(make_seq("p", prompt_of(7), max_tokens=4, frequency_penalty=0.5))
    scheduler.add(make_seq("q", [20, 21], max_tokens=4))
    carried: list[dict[str, list[int]]] = []
    for token in (10, 11, 11, 13):
        output = step(scheduler, {"p": token, "q": token})
        carried.append({chunk.request_id: chunk.output_token_ids for chunk in output.chunks})

    assert carried == [
        {"p": []},  # the first prompt chunk: nothing generated, nothing sampled
        {"p": [], "q": []},
        {"p": [11], "q": []},  # `q` has no penalty: its tokens are not copied
        {"p": [11, 11], "q": []},  # repeats stay: the frequency penalty counts them
    ]


def test_recompute_after_preemption_carries_the_generated_tokens() -> None:
    # As in the preemption test above, with `c` penalized: its recompute still counts token 40.
    scheduler = make_scheduler(num_kv_blocks=4, max_num_seqs=3)
    for seq in (
        make_seq("a", prompt_of(8), max_tokens=3),
        make_seq("b", [20, 21], max_tokens=3),
        make_seq("c", [30, 31], max_tokens=3, presence_penalty=1.0),
    ):
        scheduler.add(seq)
    step(scheduler, {"c": 40})
    assert step(scheduler).preempted_ids == ["c"]
    step(scheduler)

    recompute = step(scheduler).chunks[0]

    assert (recompute.request_id, recompute.start_position) == ("c", 0)
    assert recompute.output_token_ids == [40]


def test_top_logprobs_are_kept_only_for_requests_that_asked() -> None:
    scheduler = make_scheduler()
    asking = make_seq("asking", [20, 21], max_tokens=2, logprobs=True, top_logprobs=2)
    plain = make_seq("plain", [30, 31], max_tokens=2, logprobs=True)
    scheduler.add(asking)
    scheduler.add(plain)
    for step_index in range(2):
        output = scheduler.schedule()
        top = [[(7, -0.1 - step_index), (8, -2.5)], [(9, -0.2), (7, -1.0)]]
        scheduler.update(output, SampledTokens(token_ids=[7, 9], logprobs=[-0.1 - step_index, -0.2], top_logprobs=top))

    assert asking.output_top_logprobs == [[(7, -0.1), (8, -2.5)], [(7, -1.1), (8, -2.5)]]
    assert (plain.output_logprobs, plain.output_top_logprobs) == ([-0.2, -0.2], [])


def test_no_admission_in_a_step_that_preempted() -> None:
    # Budget 8, 4 blocks. In step 3 `b` cannot grow and is preempted; the 2 blocks it frees and the
    # 7 tokens of budget left would let it back in at once, but nothing is admitted in that step.
    scheduler = make_scheduler(num_kv_blocks=4, max_num_batched_tokens=8)
    a = make_seq("a", prompt_of(4), max_tokens=4)
    b = make_seq("b", prompt_of(8, 200), max_tokens=4)
    scheduler.add(a)
    scheduler.add(b)
    step(scheduler)
    step(scheduler)

    preempting = step(scheduler)

    assert preempting.preempted_ids == ["b"]
    assert chunk_ids(preempting) == ["a"]
    assert list(scheduler.waiting) == [b]
    budget_left = 8 - preempting.num_batched_tokens
    assert scheduler.block_manager.can_admit([], min(b.num_tokens, budget_left))

    assert chunk_ids(step(scheduler)) == ["a", "b"]
    run_to_completion(scheduler)
    assert a.num_output_tokens == b.num_output_tokens == 4
    assert scheduler.block_manager.num_used_blocks == 0


@pytest.mark.parametrize(
    ("params", "sampled", "expected_output", "expected_reason"),
    [
        ({"max_tokens": 3}, [5, 6, 7, 8], [5, 6, 7], "length"),
        ({"max_tokens": 5}, [5, EOS, 7], [5, EOS], "stop"),
        ({"max_tokens": 4, "ignore_eos": True}, [5, EOS, EOS, 7, 8], [5, EOS, EOS, 7], "length"),
        ({"max_tokens": 5, "stop_token_ids": [9]}, [5, 9, 7], [5, 9], "stop"),
        ({"max_tokens": 5, "stop_token_ids": [9], "ignore_eos": True}, [5, 9, 7], [5, 9], "stop"),
        ({"max_tokens": 2, "stop_token_ids": [9]}, [5, 9], [5, 9], "stop"),
        ({"max_tokens": 100}, [5, 6, 7, 8, 9], [5, 6, 7, 8], "length"),  # max_model_len 8
    ],
)
def test_finish_reasons(
    params: dict[str, object], sampled: list[int], expected_output: list[int], expected_reason: FinishReason
) -> None:
    scheduler = make_scheduler(max_model_len=8)
    seq = make_seq("a", prompt_of(4), **params)
    scheduler.add(seq)
    for token in sampled:
        if not scheduler.has_unfinished():
            break
        step(scheduler, {"a": token})

    assert seq.output_token_ids == expected_output
    assert seq.finish_reason == expected_reason
    assert seq.status is SequenceStatus.FINISHED
    assert scheduler.block_manager.num_used_blocks == 0


@pytest.mark.parametrize("abort_order", [("running", "waiting"), ("waiting", "running")])
def test_abort_of_waiting_and_running_sequences_frees_everything(abort_order: tuple[str, str]) -> None:
    scheduler = make_scheduler(max_num_seqs=1, max_num_batched_tokens=4, enable_prefix_caching=True)
    running = make_seq("running", prompt_of(10), max_tokens=4)
    waiting = make_seq("waiting", prompt_of(10), max_tokens=4)
    scheduler.add(running)
    scheduler.add(waiting)
    step(scheduler)  # `running` is mid-prefill; `waiting` has no slot
    assert scheduler.block_manager.num_used_blocks > 0
    seqs = {"running": running, "waiting": waiting}

    for name in abort_order:
        seq = scheduler.finish(seqs[name].request_id, "abort")
        assert seq is seqs[name]
        assert seq.status is SequenceStatus.FINISHED and seq.finish_reason == "abort"
        assert seq.block_ids == []

    assert scheduler.block_manager.num_used_blocks == 0
    assert not scheduler.running and not scheduler.waiting and not scheduler.sequences
    assert not scheduler.has_unfinished()
    assert scheduler.schedule().is_empty
    assert scheduler.finish("running", "abort") is None


# ----- static and request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduling", "expected_first_step_of_late_request"),
    [
        ("continuous", 2),  # joins at once
        ("static", 5),  # waits for the whole batch: b ends in step 4
        ("request", 7),  # waits for a (steps 1-2) and b (steps 3-6)
    ],
)
def test_late_request_admission_per_policy(scheduling: str, expected_first_step_of_late_request: int) -> None:
    scheduler = make_scheduler(scheduling=scheduling)
    scheduler.add(make_seq("a", prompt_of(3), max_tokens=2))
    scheduler.add(make_seq("b", prompt_of(3, 200), max_tokens=4))
    outputs = [step(scheduler)]
    scheduler.add(make_seq("late", prompt_of(3, 300), max_tokens=1))

    outputs += run_to_completion(scheduler)

    first_step = next(index for index, output in enumerate(outputs, start=1) if "late" in chunk_ids(output))
    assert first_step == expected_first_step_of_late_request


def test_static_batch_members_beyond_the_token_budget_run_in_later_steps() -> None:
    scheduler = make_scheduler(scheduling="static", max_num_batched_tokens=8)
    seqs = [make_seq(name, prompt_of(6, 100 * i), max_tokens=2) for i, name in enumerate("abc")]
    for seq in seqs:
        scheduler.add(seq)

    first = step(scheduler)

    assert [seq.status for seq in seqs] == [SequenceStatus.RUNNING] * 3
    assert not scheduler.waiting
    assert [(chunk.request_id, len(chunk.token_ids)) for chunk in first.chunks] == [("a", 6), ("b", 2)]
    assert seqs[2].num_computed_tokens == 0
    scheduler.add(make_seq("late", prompt_of(6, 900), max_tokens=2))

    outputs = run_to_completion(scheduler)

    assert chunk_ids(outputs[0]) == ["a", "b", "c"]
    assert all(output.num_batched_tokens <= 8 for output in outputs)
    assert all(seq.num_output_tokens == 2 for seq in seqs)
    batch_end = max(index for index, output in enumerate(outputs) if set(chunk_ids(output)) & {"a", "b", "c"})
    assert all("late" not in chunk_ids(output) for output in outputs[: batch_end + 1])


def test_request_policy_runs_one_request_at_a_time() -> None:
    scheduler = make_scheduler(scheduling="request", max_num_batched_tokens=4)
    seqs = [make_seq(name, prompt_of(6, 100 * i), max_tokens=3) for i, name in enumerate("abc")]
    for seq in seqs:
        scheduler.add(seq)

    order = []
    while scheduler.has_unfinished():
        output = step(scheduler)
        assert len(scheduler.running) <= 1
        (name,) = set(chunk_ids(output))
        if not order or order[-1] != name:
            order.append(name)

    assert order == ["a", "b", "c"]
    assert all(seq.num_output_tokens == 3 for seq in seqs)


# ----- counters ----------------------------------------------------------------------------------


def test_counters_on_a_shared_prefix() -> None:
    scheduler = make_scheduler(enable_prefix_caching=True)
    shared = prompt_of(8)
    first = make_seq("first", shared + [1, 2], max_tokens=2)  # 10 tokens, no cache hit
    scheduler.add(first)
    run_to_completion(scheduler)
    # Both full blocks of `first` are cached: 8 hits each, the rest is computed.
    scheduler.add(make_seq("second", shared + [3, 4, 5], max_tokens=2))  # 11 tokens
    scheduler.add(make_seq("third", shared + [1, 2], max_tokens=3))  # 10 tokens
    run_to_completion(scheduler)

    assert scheduler.prefix_cache_queried_tokens == 10 + 11 + 10
    assert scheduler.prefix_cache_hit_tokens == 0 + 8 + 8
    assert scheduler.num_prompt_tokens_computed == 10 + 3 + 2
    assert scheduler.num_generation_tokens == 2 + 2 + 3
    assert scheduler.block_manager.num_used_blocks == 0
