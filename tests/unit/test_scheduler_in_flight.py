"""The scheduler with pipeline stages: batches in flight at once take disjoint sequences, each its
share; a sequence in flight is never preempted; an abort in flight is passed over by `update`."""

from __future__ import annotations

from engine.config import EngineConfig
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.sampling_params import SamplingParams
from engine.step_data import SampledTokens, SchedulerOutput

BLOCK_SIZE = 4


def make_scheduler(num_kv_blocks: int = 64, max_num_seqs: int = 8, stages: int = 2) -> Scheduler:
    config = EngineConfig(
        model="unused",
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=64,
        pipeline_parallel_size=stages,
    )
    return Scheduler(config, num_kv_blocks=num_kv_blocks, max_model_len=1024, eos_token_ids={2})


def add(scheduler: Scheduler, request_id: str, prompt_length: int = 4, max_tokens: int = 8) -> Sequence:
    first = 100 * (len(scheduler.sequences) + 1)  # prompts of their own: no prefix-cache sharing
    seq = Sequence(request_id, list(range(first, first + prompt_length)), SamplingParams(max_tokens=max_tokens), seed=0)
    scheduler.add(seq)
    return seq


def tokens_for(batch: SchedulerOutput) -> SampledTokens:
    """A token of its own for each sampling row: 10, 11, ... in the batch's order."""
    count = sum(chunk.sampling is not None for chunk in batch.chunks)
    rows = range(count)
    return SampledTokens([10 + row for row in rows], logprobs=[0.0] * count, top_logprobs=[[] for _ in rows])


def ids(batch: SchedulerOutput) -> list[str]:
    return [chunk.request_id for chunk in batch.chunks]


def test_two_batches_in_flight_split_the_sequences_and_alternate() -> None:
    scheduler = make_scheduler()
    for name in "abcd":
        add(scheduler, name)
    first = scheduler.schedule()
    second = scheduler.schedule()  # before the first is updated
    assert (ids(first), ids(second)) == (["a", "b"], ["c", "d"])
    assert scheduler.schedule().is_empty  # every sequence is in flight
    scheduler.update(first, tokens_for(first))
    assert ids(scheduler.schedule()) == ["a", "b"]  # c and d still in flight


def test_without_stages_one_batch_takes_every_sequence() -> None:
    scheduler = make_scheduler(stages=1)
    for name in "abcd":
        add(scheduler, name)
    assert ids(scheduler.schedule()) == ["a", "b", "c", "d"]


def test_a_sequence_in_flight_is_never_the_one_preempted() -> None:
    # 6 blocks, two for each prompt of 8 tokens. When a needs a third, the newest sequence, c, is
    # in flight: b is preempted instead of taking c's blocks from under the batch on its way.
    scheduler = make_scheduler(num_kv_blocks=6)
    a, b, c = (add(scheduler, name, prompt_length=8) for name in "abc")
    first = scheduler.schedule()
    assert (ids(first), ids(scheduler.schedule())) == (["a", "b"], ["c"])
    scheduler.update(first, tokens_for(first))
    third = scheduler.schedule()  # a's 9th token needs a third block; none is free
    assert third.preempted_ids == ["b"] and third.preempted_tenants == [b.tenant]
    assert ids(third) == ["a"] and len(a.block_ids) == 3 and len(c.block_ids) == 2 and b.block_ids == []


def test_an_abort_while_in_flight_is_passed_over_when_its_batch_comes_back() -> None:
    scheduler = make_scheduler()
    for name in "abcd":
        add(scheduler, name)
    batch = scheduler.schedule()
    assert ids(batch) == ["a", "b"]
    scheduler.finish("a", "abort")
    updated = scheduler.update(batch, tokens_for(batch))
    assert [seq.request_id for seq in updated] == ["b"]
    assert updated[0].output_token_ids == [11]  # b's row, the second: not a's
    assert scheduler.in_flight == set()
