"""Fair scheduling across tenants: the Virtual Token Counter policy with hand-made tenants and token
counts, then the Scheduler with hand-made sequences (no weights)."""

from __future__ import annotations

import pytest

from deployments.config.engine_settings import EngineSettings
from engine.config import EngineConfig
from engine.core.fair_policy import OUTPUT_TOKEN_COST, PROMPT_TOKEN_COST, WaitingQueue, fair_shares
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.sampling_params import SamplingParams
from engine.step_data import SampledTokens, SchedulerOutput

BLOCK_SIZE = 4
# What the fake model samples: not EOS (2).
TOKEN = 7


def make_seq(
    request_id: str, tenant: str, weight: float = 1.0, arrival: float = 0.0, num_prompt_tokens: int = 4
) -> Sequence:
    return Sequence(
        request_id=request_id,
        prompt_token_ids=list(range(100, 100 + num_prompt_tokens)),
        params=SamplingParams(),
        seed=0,
        tenant=tenant,
        tenant_weight=weight,
        arrival_time=arrival,
    )


def queue_with(*seqs: Sequence, fair: bool = True) -> WaitingQueue:
    queue = WaitingQueue(fair=fair)
    for seq in seqs:
        queue.add(seq)
    return queue


def run(queue: WaitingQueue, *seqs: Sequence) -> list[Sequence]:
    """Admit `seqs` (each the next its tenant would admit); returns them, as a running list."""
    for seq in seqs:
        queue.take(seq)
    return list(seqs)


def admission_order(queue: WaitingQueue) -> list[str]:
    order = []
    while (seq := queue.peek()) is not None:
        queue.take(seq)
        order.append(seq.request_id)
    return order


# ----- counters ---------------------------------------------------------------------------------


def test_costs_make_a_generated_token_dearer_than_a_prompt_token() -> None:
    assert (PROMPT_TOKEN_COST, OUTPUT_TOKEN_COST) == (1.0, 2.0)


def test_counter_grows_by_token_costs_divided_by_the_weight() -> None:
    light = make_seq("light", "a")
    heavy = make_seq("heavy", "b", weight=4.0)
    queue = queue_with(light, heavy)

    queue.charge(light, num_prompt_tokens=10, num_output_tokens=3)
    queue.charge(heavy, num_prompt_tokens=10, num_output_tokens=3)

    assert queue.tenants["a"].counter == 10 * 1.0 + 3 * 2.0
    assert queue.tenants["b"].counter == (10 * 1.0 + 3 * 2.0) / 4


def test_a_chunk_is_charged_for_new_prompt_tokens_and_its_sampled_token_but_not_for_recompute() -> None:
    seq = make_seq("s", "a", num_prompt_tokens=10)
    queue = queue_with(seq)
    tenant = queue.tenants["a"]

    queue.charge_chunk(seq, 6)  # prompt [0, 6): no token sampled
    assert tenant.counter == 6
    seq.num_computed_tokens = 6
    queue.charge_chunk(seq, 4)  # prompt [6, 10), samples the first token
    assert tenant.counter == 10 + 2
    seq.num_computed_tokens = 10
    seq.output_token_ids.append(TOKEN)
    queue.charge_chunk(seq, 1)  # a decode step
    assert tenant.counter == 10 + 2 * 2
    seq.output_token_ids.append(TOKEN)

    seq.num_computed_tokens = 0  # preempted: the whole sequence is recomputed, the last token sampled
    queue.charge_chunk(seq, 12)

    assert tenant.counter == 10 + 3 * 2


def test_prefix_cache_hits_are_not_charged() -> None:
    seq = make_seq("s", "a", num_prompt_tokens=10)
    queue = queue_with(seq)
    seq.num_computed_tokens = 8  # two blocks from the prefix cache

    queue.charge_chunk(seq, 2)

    assert queue.tenants["a"].counter == 2 + 2


def test_a_tenant_becoming_active_is_lifted_to_the_least_active_counter() -> None:
    a, b, c, d = (make_seq(name, name) for name in "abcd")
    queue = queue_with(a, b, c, d)
    for seq, counter in ((a, 10), (b, 20), (c, 3), (d, 50)):
        queue.charge(seq, counter, 0)
    queue.remove(c)
    queue.remove(d)

    queue.add(make_seq("c2", "c"))  # idle while the others were served: its 3 becomes 10
    queue.add(make_seq("d2", "d"))  # already ahead of everyone: kept
    queue.add(make_seq("a2", "a"))  # still active: not lifted

    assert [queue.tenants[name].counter for name in "abcd"] == [10, 20, 10, 50]


def test_a_tenant_alone_keeps_its_counter_when_it_becomes_active() -> None:
    first = make_seq("first", "a")
    queue = queue_with(first)
    queue.charge(first, 5, 0)
    queue.remove(first)

    queue.add(make_seq("second", "a"))

    assert queue.tenants["a"].counter == 5


def test_a_running_tenant_is_active_and_lifts_a_newcomer() -> None:
    a = make_seq("a", "a")
    queue = queue_with(a)
    run(queue, a)
    queue.charge(a, 8, 0)

    queue.add(make_seq("b", "b"))

    assert queue.tenants["b"].counter == 8


# ----- admission order --------------------------------------------------------------------------


def test_the_least_counter_goes_first_fifo_within_a_tenant() -> None:
    a0, a1, a2 = (make_seq(f"a{i}", "a", arrival=i) for i in range(3))
    b0, b1 = (make_seq(f"b{i}", "b", arrival=10 + i) for i in range(2))
    queue = queue_with(a0, a1, a2, b0, b1)
    queue.charge(a0, 5, 0)

    assert queue.peek() is b0
    queue.take(b0)
    queue.charge(b0, 6, 0)  # b passes a
    assert [seq.request_id for seq in queue] == ["a0", "a1", "a2", "b1"]
    assert admission_order(queue) == ["a0", "a1", "a2", "b1"]


def test_equal_counters_go_by_earliest_arrival_at_the_head() -> None:
    late_a = make_seq("late-a", "a", arrival=5.0)
    early_b = make_seq("early-b", "b", arrival=1.0)
    queue = queue_with(late_a, early_b)

    assert queue.peek() is early_b


def test_a_preempted_sequence_goes_back_to_the_front_of_its_tenants_queue() -> None:
    a0, a1, a2 = (make_seq(f"a{i}", "a", arrival=i) for i in range(3))
    queue = queue_with(a0, a1)
    run(queue, a0)
    queue.add(a2)

    queue.requeue(a0)

    assert [seq.request_id for seq in queue] == ["a0", "a1", "a2"]
    assert queue.tenants["a"].num_running == 0


def test_fcfs_books_every_tenant_as_one() -> None:
    seqs = [make_seq(f"r{i}", tenant, arrival=i) for i, tenant in enumerate("abab")]
    queue = queue_with(*seqs, fair=False)
    queue.charge(seqs[0], 100, 0)  # would put tenant a last under "fair"

    assert admission_order(queue) == ["r0", "r1", "r2", "r3"]


def test_a_single_tenant_is_admitted_in_fcfs_order() -> None:
    def moves(queue: WaitingQueue) -> list[str]:
        seqs = [make_seq(f"r{i}", "only", arrival=i) for i in range(5)]
        for seq in seqs[:3]:
            queue.add(seq)
        running = run(queue, seqs[0], seqs[1])
        queue.charge(seqs[0], 50, 3)
        queue.add(seqs[3])
        queue.requeue(running[1])
        queue.requeue(running[0])
        queue.add(seqs[4])
        return admission_order(queue)

    assert moves(WaitingQueue(fair=True)) == moves(WaitingQueue(fair=False)) == ["r0", "r1", "r2", "r3", "r4"]


# ----- fair shares ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "demands", "num_slots", "expected"),
    [
        ({"a": 1, "b": 1}, {"a": 9, "b": 9}, 4, {"a": 2, "b": 2}),
        ({"a": 1, "b": 1}, {"a": 9, "b": 9}, 3, {"a": 1.5, "b": 1.5}),
        ({"a": 1, "b": 1}, {"a": 9, "b": 1}, 4, {"a": 3, "b": 1}),  # b's unused share goes to a
        ({"a": 1, "b": 3}, {"a": 9, "b": 9}, 8, {"a": 2, "b": 6}),
        ({"a": 3, "b": 1}, {"a": 2, "b": 9}, 8, {"a": 2, "b": 6}),  # heavy but capped at its demand
        ({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 9}, 9, {"a": 1, "b": 2, "c": 6}),  # caps cascade
        ({"a": 1, "b": 1}, {"a": 1, "b": 2}, 10, {"a": 1, "b": 2}),  # demand below the slots
        ({"only": 2.5}, {"only": 9}, 4, {"only": 4}),
    ],
)
def test_fair_shares_water_fill_by_weight_capped_at_demand(
    weights: dict[str, float], demands: dict[str, int], num_slots: int, expected: dict[str, float]
) -> None:
    assert fair_shares(weights, demands, num_slots) == pytest.approx(expected)


# ----- fair-share preemption --------------------------------------------------------------------


def flooded_queue(**tenants: tuple[int, int]) -> tuple[WaitingQueue, list[Sequence]]:
    """Each tenant runs and queues (num_running, num_waiting) sequences, named tenant + index; then
    the first, `a`, is charged far ahead of the others (all at 0). Returns the queue and the
    running list, in admission order (a's first)."""
    queue = WaitingQueue()
    running: list[Sequence] = []
    for name, (num_running, num_waiting) in tenants.items():
        for index in range(num_running + num_waiting):
            queue.add(make_seq(f"{name}{index}", name, arrival=len(queue) + len(running)))
        running += run(queue, *list(queue.tenants[name].waiting)[:num_running])
    queue.charge(running[0], 1000, 0)
    return queue, running


def head_of(queue: WaitingQueue, tenant: str) -> Sequence:
    return queue.tenants[tenant].waiting[0]


def test_fair_share_victim_is_the_newest_of_the_tenant_furthest_above_its_share() -> None:
    # 6 slots; demands a 6, b 3, c 1: shares a 2.5, b 2.5, c 1. a runs 4 (1.5 above), c none.
    queue, running = flooded_queue(a=(4, 2), b=(2, 1), c=(0, 1))

    victim = queue.fair_share_victim(head_of(queue, "c"), running, num_slots=6)

    assert victim is not None and victim.request_id == "a3"


def test_ties_above_share_go_to_the_higher_counter() -> None:
    # 4 slots; demands a 3, b 3, c 1: shares 1.5, 1.5, 1. a and b each run 2 (0.5 above).
    queue, running = flooded_queue(a=(2, 1), b=(2, 1), c=(0, 1))
    queue.charge(head_of(queue, "b"), 2000, 0)  # b now has the higher counter

    victim = queue.fair_share_victim(head_of(queue, "c"), running, num_slots=4)

    assert victim is not None and victim.request_id == "b1"


def test_a_tenant_whose_sequences_are_all_in_flight_gives_way_to_the_next_above_its_share() -> None:
    # As above, but b's sequences are in a batch in flight (left out of `running`): a gives.
    queue, running = flooded_queue(a=(2, 1), b=(2, 1), c=(0, 1))
    queue.charge(head_of(queue, "b"), 2000, 0)
    preemptable = [seq for seq in running if seq.tenant != "b"]

    victim = queue.fair_share_victim(head_of(queue, "c"), preemptable, num_slots=4)

    assert victim is not None and victim.request_id == "a1"


def test_no_preemption_for_a_tenant_at_its_share() -> None:
    # 6 slots; demands a 10, b 3, c 10: shares 2 each. a runs 4 (2 above), b its 2, c none.
    queue, running = flooded_queue(a=(4, 6), b=(2, 1), c=(0, 10))

    assert queue.fair_share_victim(head_of(queue, "b"), running, num_slots=6) is None
    victim = queue.fair_share_victim(head_of(queue, "c"), running, num_slots=6)
    assert victim is not None and victim.request_id == "a3"


def test_a_heavier_tenant_has_a_larger_share_set_by_its_latest_request() -> None:
    # 4 slots; a and b run 2 each, demands 10 and 3.
    queue, running = flooded_queue(a=(2, 8), b=(2, 1))
    assert queue.fair_share_victim(head_of(queue, "b"), running, num_slots=4) is None  # b is at its share

    queue.add(make_seq("b9", "b", weight=3.0, arrival=99))  # b's weight is 3 now: shares a 1, b 3

    victim = queue.fair_share_victim(head_of(queue, "b"), running, num_slots=4)
    assert victim is not None and victim.request_id == "a1"


def test_no_preemption_of_a_tenant_at_its_share() -> None:
    # a runs 2 of its demand of 2, c none. With 2 slots a's share is 1: it gives one up. With 8
    # (room for c in slots, not in the KV pool) a's share is its 2: it keeps them.
    queue, running = flooded_queue(a=(2, 0), c=(0, 1))

    victim = queue.fair_share_victim(head_of(queue, "c"), running, num_slots=2)
    assert victim is not None and victim.request_id == "a1"
    assert queue.fair_share_victim(head_of(queue, "c"), running, num_slots=8) is None


def test_no_preemption_of_a_tenant_below_its_share() -> None:
    # 8 slots, KV-bound (3 run); demands 10 and 6: shares 4 and 4. a runs 3 (1 below), c none.
    queue, running = flooded_queue(a=(3, 7), c=(0, 6))

    assert queue.fair_share_victim(head_of(queue, "c"), running, num_slots=8) is None


def test_a_slot_does_not_change_hands_back_and_forth() -> None:
    # 3 slots; demands a 3, b 2: shares 1.5 and 1.5. a runs 2 (0.5 above) and b 1, but taking
    # one from a would put b 0.5 above instead.
    queue, running = flooded_queue(a=(2, 1), b=(1, 1))

    assert queue.fair_share_victim(head_of(queue, "b"), running, num_slots=3) is None


def test_no_preemption_of_a_tenant_that_would_be_readmitted_first() -> None:
    # 4 slots; a runs 4 (share 3), b none (share 1).
    queue, running = flooded_queue(a=(4, 0), b=(0, 1))
    assert queue.fair_share_victim(head_of(queue, "b"), running, num_slots=4) is not None

    # Once b has received more service than a, a preempted sequence would come before b's.
    queue.charge(head_of(queue, "b"), 5000, 0)

    assert queue.fair_share_victim(head_of(queue, "b"), running, num_slots=4) is None


def test_a_tenant_alone_is_never_preempted_for_itself() -> None:
    queue, running = flooded_queue(a=(4, 5))

    assert queue.fair_share_victim(head_of(queue, "a"), running, num_slots=4) is None
    assert queue.fair_share_victim(head_of(queue, "a"), running, num_slots=8) is None  # KV-bound


def test_kv_victim_is_the_newest_of_the_tenant_with_the_highest_counter() -> None:
    queue, running = flooded_queue(a=(2, 0), b=(2, 1))  # a far ahead in service; b's are the newest
    assert [seq.request_id for seq in running] == ["a0", "a1", "b0", "b1"]

    assert queue.preemption_victim(running).request_id == "a1"
    assert queue.preemption_victim(running[2:]).request_id == "b1"  # of those not yet scheduled


# ----- the scheduler ----------------------------------------------------------------------------


def make_scheduler(tenant_scheduling: str, scheduling: str = "continuous", **overrides: int) -> Scheduler:
    settings = {"num_kv_blocks": 64, "max_num_seqs": 2, "max_num_batched_tokens": 64} | overrides
    config = EngineConfig(
        model="unused",
        block_size=BLOCK_SIZE,
        max_num_seqs=settings["max_num_seqs"],
        max_num_batched_tokens=settings["max_num_batched_tokens"],
        scheduling=scheduling,
        tenant_scheduling=tenant_scheduling,
        enable_prefix_caching=False,
    )
    return Scheduler(config, num_kv_blocks=settings["num_kv_blocks"], max_model_len=1024, eos_token_ids={2})


def step(scheduler: Scheduler) -> SchedulerOutput:
    output = scheduler.schedule()
    num_sampled = sum(1 for chunk in output.chunks if chunk.sampling is not None)
    scheduler.update(
        output, SampledTokens([TOKEN] * num_sampled, logprobs=[0.0] * num_sampled, top_logprobs=[[]] * num_sampled)
    )
    return output


def tenant_seq(request_id: str, tenant: str, num_prompt_tokens: int, max_tokens: int) -> Sequence:
    return Sequence(
        request_id=request_id,
        prompt_token_ids=list(range(100, 100 + num_prompt_tokens)),
        params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        seed=0,
        tenant=tenant,
    )


def chunk_ids(output: SchedulerOutput) -> list[str]:
    return [chunk.request_id for chunk in output.chunks]


def steps_until_scheduled(scheduler: Scheduler, request_id: str, max_steps: int = 500) -> tuple[int, list[str]]:
    """Steps until `request_id` gets its first chunk, and who was preempted meanwhile."""
    preempted: list[str] = []
    for index in range(1, max_steps + 1):
        output = step(scheduler)
        preempted += output.preempted_ids
        if request_id in chunk_ids(output):
            return index, preempted
    raise AssertionError(f"{request_id} was not scheduled in {max_steps} steps")


def flood_then_newcomer(scheduler: Scheduler) -> tuple[int, list[str]]:
    """Tenant a queues 6 long sequences and runs 3 steps; then tenant b adds one short one."""
    for index in range(6):
        scheduler.add(tenant_seq(f"a{index}", "a", num_prompt_tokens=8, max_tokens=40))
    for _ in range(3):
        step(scheduler)
    scheduler.add(tenant_seq("b", "b", num_prompt_tokens=4, max_tokens=2))
    return steps_until_scheduled(scheduler, "b")


def test_a_flooding_tenant_cannot_keep_a_new_tenants_sequence_waiting() -> None:
    scheduler = make_scheduler("fair")

    num_steps, preempted = flood_then_newcomer(scheduler)

    # b, lifted to a's counter, ties with a and goes first (it runs fewer sequences); a, above its
    # share of 1 slot, gives up its newest, in b's first step.
    assert num_steps == 1
    assert preempted == ["a1"]
    assert scheduler.num_preemptions == 1
    assert [seq.request_id for seq in scheduler.running] == ["a0", "b"]


def test_fcfs_keeps_a_newcomer_behind_the_flooding_tenants_queue() -> None:
    scheduler = make_scheduler("fcfs")

    num_steps, preempted = flood_then_newcomer(scheduler)

    # b's turn comes after the last of a's 6 sequences (3 waves of 40 steps) is admitted.
    assert num_steps > 2 * 40
    assert preempted == []


@pytest.mark.parametrize(
    ("tenant_scheduling", "expected_steps", "expected_batch"),
    [
        ("fair", 40 - 3 + 1, ["b", "a2"]),  # b leads the batch after a's first (b came 3 steps in)
        ("fcfs", 3 * 40 - 3 + 1, ["b"]),  # after all three of a's batches
    ],
)
def test_static_scheduling_admits_in_the_fair_order_without_preempting(
    tenant_scheduling: str, expected_steps: int, expected_batch: list[str]
) -> None:
    scheduler = make_scheduler(tenant_scheduling, scheduling="static")

    num_steps, preempted = flood_then_newcomer(scheduler)

    assert preempted == []
    assert num_steps == expected_steps
    assert [seq.request_id for seq in scheduler.running] == expected_batch


def test_a_tenant_below_its_share_preempts_when_the_kv_pool_has_no_room() -> None:
    # 9 blocks of 4 tokens, 4 slots. a's 3 sequences take every block; b queues 3: shares 2 and 2.
    scheduler = make_scheduler("fair", num_kv_blocks=9, max_num_seqs=4)
    for index in range(3):
        scheduler.add(tenant_seq(f"a{index}", "a", num_prompt_tokens=8, max_tokens=4))
    step(scheduler)
    for index in range(3):
        scheduler.add(tenant_seq(f"b{index}", "b", num_prompt_tokens=4, max_tokens=4))
    first = step(scheduler)  # b is lifted to a's counter; a's decodes take the last free blocks
    assert "b0" not in chunk_ids(first) and scheduler.block_manager.num_free_blocks == 0
    assert len(scheduler.running) < 4  # a slot is free: only the pool stands in b's way

    second = step(scheduler)

    assert second.preempted_ids == ["a2"]
    assert chunk_ids(second) == ["a0", "a1", "b0", "b1"]


@pytest.mark.parametrize("end", ["length", "abort"])
def test_a_tenant_whose_sequences_ended_no_longer_lifts_newcomers(end: str) -> None:
    scheduler = make_scheduler("fair")
    seq = tenant_seq("a", "a", num_prompt_tokens=4, max_tokens=2)
    scheduler.add(seq)
    step(scheduler)
    if end == "abort":
        scheduler.finish("a", "abort")
    else:
        step(scheduler)
    assert seq.is_finished

    scheduler.add(tenant_seq("b", "b", num_prompt_tokens=4, max_tokens=2))

    assert scheduler.waiting.tenants["a"].counter > 0
    assert scheduler.waiting.tenants["b"].counter == 0


@pytest.mark.parametrize(("tenant_scheduling", "expected_victim"), [("fair", "a"), ("fcfs", "b1")])
def test_kv_pressure_preempts_the_newest_of_the_most_served_tenant(
    tenant_scheduling: str, expected_victim: str
) -> None:
    # 8 blocks of 4 tokens. b0, then a (a long prompt: the most served), then b1 fill them all.
    scheduler = make_scheduler(tenant_scheduling, num_kv_blocks=8, max_num_seqs=3)
    for request_id, tenant, num_prompt_tokens in (("b0", "b", 3), ("a", "a", 15), ("b1", "b", 6)):
        scheduler.add(tenant_seq(request_id, tenant, num_prompt_tokens, max_tokens=12))
        step(scheduler)
    assert [seq.request_id for seq in scheduler.running] == ["b0", "a", "b1"]
    assert scheduler.block_manager.num_free_blocks == 0

    output = step(scheduler)  # a needs a fifth block

    assert output.preempted_ids == [expected_victim]  # fcfs: the newest; fair: the newest of a


def test_a_single_tenant_gets_the_same_steps_under_fair_and_fcfs() -> None:
    def steps(tenant_scheduling: str) -> list[tuple[list[tuple[str, list[int], int]], list[str]]]:
        # A pool small enough that sequences get preempted.
        scheduler = make_scheduler(tenant_scheduling, num_kv_blocks=10, max_num_seqs=3, max_num_batched_tokens=16)
        for index, length in enumerate((9, 14, 6, 11, 3)):
            scheduler.add(tenant_seq(f"r{index}", "only", num_prompt_tokens=length, max_tokens=12))
        history = []
        while scheduler.has_unfinished():
            output = step(scheduler)
            history.append(
                ([(c.request_id, c.token_ids, c.start_position) for c in output.chunks], output.preempted_ids)
            )
        assert scheduler.num_preemptions > 0
        return history

    assert steps("fair") == steps("fcfs")


def test_recompute_after_preemption_is_not_charged() -> None:
    scheduler = make_scheduler("fair", num_kv_blocks=10, max_num_seqs=3, max_num_batched_tokens=16)
    lengths = (9, 14, 6, 11, 3)
    for index, length in enumerate(lengths):
        scheduler.add(tenant_seq(f"r{index}", "only", num_prompt_tokens=length, max_tokens=12))
    while scheduler.has_unfinished():
        step(scheduler)

    assert scheduler.num_preemptions > 0
    assert scheduler.waiting.tenants["only"].counter == sum(lengths) * PROMPT_TOKEN_COST + 5 * 12 * OUTPUT_TOKEN_COST


# ----- config -----------------------------------------------------------------------------------


def test_tenant_scheduling_defaults_to_fair_and_rejects_unknown_policies() -> None:
    assert EngineConfig(model="unused").tenant_scheduling == "fair"
    assert EngineConfig(model="unused", tenant_scheduling="fcfs").tenant_scheduling == "fcfs"
    with pytest.raises(ValueError, match=r"^tenant_scheduling .*'round-robin'"):
        EngineConfig(model="unused", tenant_scheduling="round-robin")


def test_serve_config_passes_tenant_scheduling_to_the_engine() -> None:
    settings = EngineSettings.model_validate({"tenant_scheduling": "fcfs"})

    assert settings.to_engine_config("m").tenant_scheduling == "fcfs"
    assert EngineSettings().tenant_scheduling == "fair"
