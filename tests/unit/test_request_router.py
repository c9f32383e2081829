"""The LLM request router's decision, with hand-made loads and prompts (no Ray cluster)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID

from autoscaling import LoadSignals
from deployments.generation import ChatMessage, GenerationRequest
from deployments.routing.policy import (
    PrefixIndex,
    ReplicaCandidate,
    RoutingPolicy,
    choose_replica,
    load_score,
    prompt_bytes,
    prompt_chunk_hashes,
)
from deployments.routing.serve_router import LLMRequestRouter
from engine import SamplingParams

POLICY = RoutingPolicy(imbalance_threshold=2.0, kv_usage_weight=4.0)
DEPLOYMENT = DeploymentID(name="LLMServer:tiny", app_name="routing")


def signals(kv_usage: float = 0.0, num_sequences: float = 0.0, num_requests: float = 0.0) -> LoadSignals:
    return LoadSignals(
        num_waiting=0.0, num_running=num_sequences, kv_usage=kv_usage, idle_s=0.0, num_requests=num_requests
    )


def load(
    replica_id: str,
    num_ongoing: int,
    kv_usage: float = 0.0,
    max_ongoing: int = 8,
    num_sequences: float = 0.0,
    num_requests: float | None = None,
) -> ReplicaCandidate:
    """A candidate whose last report counted `num_requests` requests (default: as many as probed)."""
    reported_requests = num_ongoing if num_requests is None else num_requests
    return ReplicaCandidate(replica_id, num_ongoing, max_ongoing, signals(kv_usage, num_sequences, reported_requests))


def choose(loads: list[ReplicaCandidate], affine: str | None = None, seed: int = 0) -> str | None:
    return choose_replica(loads, affine, POLICY, random.Random(seed))


def completion(prompt: str | list[int]) -> GenerationRequest:
    return GenerationRequest(
        request_id="r", prompt=prompt, messages=None, params=SamplingParams(max_tokens=4), max_tokens=4
    )


def chat(*contents: str, name: str | None = None) -> GenerationRequest:
    messages = [ChatMessage(role="user", content=content, name=name) for content in contents]
    return GenerationRequest(
        request_id="r", prompt=None, messages=messages, params=SamplingParams(max_tokens=4), max_tokens=4
    )


# ----- scores and choice --------------------------------------------------------------------------


def test_score_is_ongoing_requests_plus_weighted_kv_usage() -> None:
    assert load_score(load("a", 3, kv_usage=0.5), kv_usage_weight=4.0) == 5.0
    assert load_score(load("a", 3, kv_usage=0.5), kv_usage_weight=0.0) == 3.0


def test_score_counts_a_requests_n_choices_from_the_engines_sequences() -> None:
    # One ongoing request with n=4 choices: four engine sequences.
    assert load_score(load("a", 1, num_sequences=4.0), kv_usage_weight=4.0) == 4.0
    # The fresh probe still counts when the stats are a period old and show fewer.
    assert load_score(load("a", 3, num_sequences=1.0, num_requests=1.0), kv_usage_weight=4.0) == 3.0
    engine = LoadSignals(num_waiting=2.0, num_running=3.0, kv_usage=0.0, idle_s=0.0, num_requests=1.0)
    waiting_and_running = ReplicaCandidate("a", 1, 8, engine)
    assert load_score(waiting_and_running, kv_usage_weight=0.0) == 5.0


def test_a_replica_probed_empty_scores_zero_whatever_its_last_report_said() -> None:
    # Its last report (a period old) still shows three requests of one sequence each.
    assert load_score(load("a", 0, num_sequences=3.0, num_requests=3.0), kv_usage_weight=4.0) == 0.0
    assert choose([load("a", 0, num_sequences=3.0, num_requests=3.0), load("b", 1)]) == "a"


def test_a_replica_running_more_sequences_than_its_ongoing_requests_loses() -> None:
    # Both probe two ongoing requests; "a"'s engine runs eight sequences (requests with n=4).
    assert choose([load("a", 2, num_sequences=8.0), load("b", 2, num_sequences=2.0)]) == "b"
    # Enough to outweigh "a"'s prefix affinity too.
    assert choose([load("a", 2, num_sequences=8.0), load("b", 2, num_sequences=2.0)], affine="a") == "b"


def test_a_replica_without_stats_scores_by_its_ongoing_requests() -> None:
    fresh = ReplicaCandidate("new", 2, 8, None)
    assert load_score(fresh, kv_usage_weight=4.0) == 2.0
    assert choose([fresh, load("old", 2, kv_usage=0.5)]) == "new"


def test_lowest_score_wins() -> None:
    assert choose([load("a", 3), load("b", 1), load("c", 2)]) == "b"


def test_fuller_kv_pool_loses_between_equal_counts() -> None:
    assert choose([load("a", 2, kv_usage=0.9), load("b", 2, kv_usage=0.1)]) == "b"


def test_a_real_difference_in_queue_depth_outweighs_kv_usage() -> None:
    # kv_usage_weight 4: a full pool counts as four requests, not as a whole queue.
    assert choose([load("a", 1, kv_usage=1.0), load("b", 6, kv_usage=0.0)]) == "a"


def test_ties_are_broken_at_random() -> None:
    loads = [load("a", 1), load("b", 1), load("c", 4)]
    chosen = [choose(loads, seed=seed) for seed in range(200)]
    assert set(chosen) == {"a", "b"}
    assert 60 < chosen.count("a") < 140


def test_full_replicas_are_skipped_while_another_has_room() -> None:
    # "a" is full with an empty KV pool; "b" has room though it scores worse on paper.
    assert choose([load("a", 8, max_ongoing=8), load("b", 7, kv_usage=1.0, max_ongoing=8)]) == "b"


def test_no_replica_when_all_are_full() -> None:
    assert choose([load("a", 8), load("b", 9)]) is None
    assert choose([]) is None


def test_affinity_kept_while_within_the_threshold() -> None:
    # "a" is two requests busier than "b": exactly the threshold, so the cached prefix wins.
    assert choose([load("a", 3), load("b", 1)], affine="a") == "a"


def test_affinity_dropped_above_the_threshold() -> None:
    assert choose([load("a", 3, kv_usage=0.1), load("b", 1)], affine="a") == "b"
    assert choose([load("a", 4), load("b", 1)], affine="a") == "b"


def test_full_affine_replica_is_not_chosen() -> None:
    assert choose([load("a", 8, max_ongoing=8), load("b", 7)], affine="a") == "b"


def test_affine_replica_unknown_to_the_loads_is_ignored() -> None:
    assert choose([load("a", 2), load("b", 1)], affine="gone") == "b"


def kv_usage_from_stats(stats: dict[str, Any]) -> float:
    """The KV usage routing sees for a replica whose last routing stats are `stats`."""
    return ReplicaCandidate("a", 0, 8, LoadSignals.from_metrics(stats)).kv_usage


def full_stats(kv_usage: Any) -> dict[str, Any]:
    return {**signals().to_metrics(), "kv_usage": kv_usage}


def test_missing_or_malformed_stats_count_as_an_empty_kv_pool() -> None:
    assert kv_usage_from_stats({}) == 0.0
    assert kv_usage_from_stats({"num_waiting": 3.0}) == 0.0
    assert kv_usage_from_stats({"kv_usage": 0.5}) == 0.0  # the other signals not reported
    assert kv_usage_from_stats(full_stats(None)) == 0.0
    assert kv_usage_from_stats(full_stats("full")) == 0.0
    assert kv_usage_from_stats(full_stats(float("nan"))) == 0.0
    assert kv_usage_from_stats(full_stats(0.25)) == 0.25


def test_kv_usage_is_clamped_to_zero_to_one() -> None:
    assert kv_usage_from_stats(full_stats(1.5)) == 1.0
    assert kv_usage_from_stats(full_stats(-1)) == 0.0
    assert load("a", 0, kv_usage=7.0).kv_usage == 1.0
    assert load_score(load("a", 0, kv_usage=7.0), kv_usage_weight=4.0) == 4.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("imbalance_threshold", -1.0), ("kv_usage_weight", -0.5), ("prefix_chunk_bytes", 0), ("max_prefix_chunks", 0)],
)
def test_policy_refuses_bad_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RoutingPolicy(**{field: value})


# ----- prompts and prefixes ---------------------------------------------------------------------


def test_only_full_chunks_are_hashed_and_each_hash_covers_its_whole_prefix() -> None:
    hashes = prompt_chunk_hashes(b"abcdabcdab", chunk_bytes=4)
    assert len(hashes) == 2
    # The same chunk after a different prefix hashes differently.
    assert hashes[0] != hashes[1]
    assert prompt_chunk_hashes(b"xxxxabcd", chunk_bytes=4)[1] != hashes[1]
    assert prompt_chunk_hashes(b"abc", chunk_bytes=4) == []


def test_prompts_sharing_a_prefix_share_its_chunk_hashes() -> None:
    shared = "You are a helpful assistant. " * 8
    first = prompt_chunk_hashes(prompt_bytes(completion(shared + "What is Ray? " * 10)), 64)
    second = prompt_chunk_hashes(prompt_bytes(completion(shared + "Who wrote Dune? " * 10)), 64)
    num_shared_chunks = len(b"text:" + shared.encode()) // 64
    assert first[:num_shared_chunks] == second[:num_shared_chunks]
    assert len(first) > num_shared_chunks
    assert not set(first[num_shared_chunks:]) & set(second[num_shared_chunks:])


def test_sixteen_token_ids_make_one_chunk() -> None:
    request = completion(list(range(100, 148)))
    assert len(prompt_chunk_hashes(prompt_bytes(request), 64)) == (4 + 48 * 4) // 64


def test_a_growing_conversation_keeps_its_earlier_chunks() -> None:
    system = "Answer in French. " * 10
    earlier = prompt_chunk_hashes(prompt_bytes(chat(system, "Bonjour")), 64)
    later = prompt_chunk_hashes(prompt_bytes(chat(system, "Bonjour", "Comment ça va ? " * 5)), 64)
    assert len(earlier) >= 3
    assert later[: len(earlier)] == earlier


def test_a_chat_messages_name_is_part_of_its_prefix() -> None:
    text = "hello " * 30
    anonymous = prompt_chunk_hashes(prompt_bytes(chat(text, text)), 64)
    named = prompt_chunk_hashes(prompt_bytes(chat(text, text, name="alice")), 64)
    other = prompt_chunk_hashes(prompt_bytes(chat(text, text, name="bob")), 64)
    assert prompt_bytes(chat(text, name="alice")) != prompt_bytes(chat(text))
    assert len({anonymous[-1], named[-1], other[-1]}) == 3
    assert named == prompt_chunk_hashes(prompt_bytes(chat(text, text, name="alice")), 64)


def test_text_token_ids_and_chat_never_share_a_prefix() -> None:
    text = "hello " * 30
    kinds = [prompt_bytes(completion(text)), prompt_bytes(chat(text)), prompt_bytes(completion([1] * 60))]
    firsts = {prompt_chunk_hashes(data, 64)[0] for data in kinds}
    assert len(firsts) == 3


def test_longest_matching_prefix_wins() -> None:
    index = PrefixIndex(capacity=100)
    base = prompt_chunk_hashes(b"s" * 64 * 2, 64)
    longer = prompt_chunk_hashes(b"s" * 64 * 5, 64)
    index.record(base, "a")
    index.record(longer, "b")
    # Sharing four chunks with the prompt sent to "b" beats sharing its first two with "a"'s, which
    # "b"'s prompt also had: the index remembers the last replica of each prefix.
    query = prompt_chunk_hashes(b"s" * 64 * 4 + b"t" * 64, 64)
    assert index.longest_match(query, {"a", "b"}) == "b"
    other = prompt_chunk_hashes(b"t" * 64 * 3, 64)
    index.record(other, "a")
    assert index.longest_match(other + prompt_chunk_hashes(b"u" * 64, 64), {"a", "b"}) == "a"
    assert index.longest_match(prompt_chunk_hashes(b"u" * 64 * 3, 64), {"a", "b"}) is None


def test_a_match_on_a_replica_not_offered_falls_back_to_a_shorter_one() -> None:
    index = PrefixIndex(capacity=100)
    index.record(prompt_chunk_hashes(b"p" * 128, 64), "a")
    index.record(prompt_chunk_hashes(b"p" * 256, 64), "b")
    assert index.longest_match(prompt_chunk_hashes(b"p" * 256, 64), {"a"}) is None
    index.record(prompt_chunk_hashes(b"p" * 128, 64), "a")
    assert index.longest_match(prompt_chunk_hashes(b"p" * 256, 64), {"a"}) == "a"


def test_index_keeps_at_most_capacity_hashes_least_recently_sent_out_first() -> None:
    index = PrefixIndex(capacity=4)
    old = prompt_chunk_hashes(b"o" * 128, 64)
    new = prompt_chunk_hashes(b"n" * 128, 64)
    index.record(old, "a")
    index.record(new, "b")
    index.record(old, "a")  # sent again: now the most recent
    index.record(prompt_chunk_hashes(b"x" * 128, 64), "c")
    assert len(index) == 4
    assert index.longest_match(old, {"a", "b", "c"}) == "a"
    assert index.longest_match(new, {"a", "b", "c"}) is None


def test_prefixes_of_replicas_that_are_gone_are_forgotten() -> None:
    index = PrefixIndex(capacity=100)
    index.record(prompt_chunk_hashes(b"a" * 128, 64), "a")
    index.record(prompt_chunk_hashes(b"b" * 128, 64), "b")
    index.keep_only({"b", "c"})
    assert len(index) == 2
    assert index.longest_match(prompt_chunk_hashes(b"b" * 128, 64), {"a", "b"}) == "b"
    assert index.longest_match(prompt_chunk_hashes(b"a" * 128, 64), {"a", "b"}) is None


# ----- the Serve adapter, with stand-in replicas ---------------------------------------------------


class FakeReplica:
    """What the router reads from a RunningReplica: id, capacity, routing stats and a queue probe."""

    def __init__(
        self,
        unique_id: str,
        num_ongoing: int | None,
        kv_usage: float | None = None,
        num_sequences: float = 0.0,
        num_requests: float = 0.0,
    ) -> None:
        self.replica_id = ReplicaID(unique_id=unique_id, deployment_id=DEPLOYMENT)
        self.num_ongoing = num_ongoing  # None: the probe never answers
        self.max_ongoing_requests = 8
        # As LLMServer.record_routing_stats reports them; empty before the first report.
        self.routing_stats: dict[str, Any] = (
            {} if kv_usage is None else signals(kv_usage, num_sequences, num_requests).to_metrics()
        )

    async def get_queue_len(self, *, deadline_s: float) -> int:
        if self.num_ongoing is None:
            await asyncio.sleep(deadline_s * 10)
        assert self.num_ongoing is not None
        return self.num_ongoing


def new_router(**kwargs: Any) -> LLMRequestRouter:
    router = LLMRequestRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True
    )
    router.initialize_state(**kwargs)
    return router


_request_ids = itertools.count()


def pending(request: GenerationRequest) -> PendingRequest:
    """A new request as Serve queues it: each gets its own internal id."""
    internal_id = f"internal-{next(_request_ids)}"
    metadata = RequestMetadata(
        request_id=request.request_id, internal_request_id=internal_id, call_method="generate", is_streaming=True
    )
    return PendingRequest(args=[request], kwargs={}, metadata=metadata)


def chosen_ids(ranks: list[list[Any]]) -> list[list[str]]:
    return [[replica.replica_id.unique_id for replica in rank] for rank in ranks]


async def route(router: LLMRequestRouter, replicas: list[FakeReplica], request: PendingRequest) -> list[list[str]]:
    """One try that the chosen replica accepts, as Serve reports it: `on_request_routed`."""
    ranks = await router.choose_replicas(replicas, request)
    if ranks and len(ranks[0]) == 1:
        router.on_request_routed(request, ranks[0][0].replica_id, result=None)
    return chosen_ids(ranks)


def test_kwargs_reach_the_policy_and_unknown_ones_are_refused() -> None:
    assert new_router(prefix_affinity=False, imbalance_threshold=1.5).policy == RoutingPolicy(
        prefix_affinity=False, imbalance_threshold=1.5
    )
    with pytest.raises(TypeError, match="imbalanced_threshold"):
        new_router(imbalanced_threshold=1.5)


def test_adapter_sends_to_the_least_loaded_then_keeps_the_prefix_there() -> None:
    async def scenario() -> list[list[list[str]]]:
        router = new_router(imbalance_threshold=2.0)
        replicas = [FakeReplica("busy", 2, kv_usage=0.25), FakeReplica("idle", 0, kv_usage=0.0)]
        request = completion("the same long system prompt " * 10)
        first = pending(request)
        decisions = [await route(router, replicas, first)]
        assert first.routing_context.should_backoff
        replicas[1].num_ongoing = 2  # "idle" is now a little busier than "busy": within the threshold
        replicas[0].num_ongoing = 0
        decisions.append(await route(router, replicas, pending(request)))
        replicas[1].num_ongoing = 4  # now above it
        decisions.append(await route(router, replicas, pending(request)))
        return decisions

    assert asyncio.run(scenario()) == [[["idle"]], [["idle"]], [["busy"]]]


def test_adapter_returns_nothing_while_every_replica_is_full() -> None:
    async def scenario() -> list[list[list[str]]]:
        router = new_router()
        replicas = [FakeReplica("a", 8), FakeReplica("b", 9)]
        return chosen_ids(await router.choose_replicas(replicas, pending(completion("hi"))))

    assert asyncio.run(scenario()) == []


def test_adapter_hands_unanswered_replicas_to_serve_when_no_answer_shows_room() -> None:
    async def scenario() -> list[list[list[str]]]:
        router = new_router()
        replicas = [FakeReplica("full", 8), FakeReplica("silent", None)]
        return chosen_ids(await router.choose_replicas(replicas, pending(completion("hi"))))

    assert asyncio.run(scenario()) == [["silent"]]


def test_adapter_forgets_prefixes_of_removed_replicas() -> None:
    async def scenario() -> int:
        router = new_router()
        replicas = [FakeReplica("a", 0)]
        await route(router, replicas, pending(completion("long prompt " * 20)))
        assert len(router.prefixes) > 0
        router.update_replicas([])
        return len(router.prefixes)

    assert asyncio.run(scenario()) == 0


def test_a_rejected_try_is_taken_back_when_serve_retries_the_request() -> None:
    async def scenario() -> None:
        router = new_router(imbalance_threshold=2.0)
        replicas = [FakeReplica("a", 0), FakeReplica("b", 1)]
        request = completion("the same long system prompt " * 10)
        hashes = prompt_chunk_hashes(prompt_bytes(request), router.policy.prefix_chunk_bytes)
        tried = pending(request)
        assert chosen_ids(await router.choose_replicas(replicas, tried)) == [["a"]]
        # "a" rejects it (Serve never calls on_request_routed) and Serve asks again: "a" is now full.
        replicas[0].num_ongoing = 8
        assert chosen_ids(await router.choose_replicas(replicas, tried)) == [["b"]]
        router.on_request_routed(tried, replicas[1].replica_id, result=None)
        # Only "b" got the prompt: no hash points at "a".
        assert router.prefixes.longest_match(hashes, {"a"}) is None
        assert router.prefixes.longest_match(hashes, {"a", "b"}) == "b"
        # So the next request with the prompt follows it to "b", though "a" has room again and is idler.
        replicas[0].num_ongoing = 0
        assert await route(router, replicas, pending(request)) == [["b"]]

    asyncio.run(scenario())


def test_taking_back_a_failed_try_restores_where_the_prefix_pointed_before() -> None:
    async def scenario() -> None:
        router = new_router(imbalance_threshold=0.0)
        replicas = [FakeReplica("a", 0), FakeReplica("b", 0)]
        request = completion("the same long system prompt " * 10)
        hashes = prompt_chunk_hashes(prompt_bytes(request), router.policy.prefix_chunk_bytes)
        (first,) = (await route(router, replicas, pending(request)))[0]
        other = "b" if first == "a" else "a"
        # The home replica is busier now: a new request's try goes to the other one, which rejects it.
        replicas[0 if first == "a" else 1].num_ongoing = 2
        tried = pending(request)
        assert chosen_ids(await router.choose_replicas(replicas, tried)) == [[other]]
        assert router.prefixes.longest_match(hashes, {first, other}) == other
        # Serve retries with every replica full: the try is taken back, the prefix is the home's again.
        for replica in replicas:
            replica.num_ongoing = 8
        assert await router.choose_replicas(replicas, tried) == []
        assert router.prefixes.longest_match(hashes, {first, other}) == first

    asyncio.run(scenario())


def test_a_reserved_try_that_serve_never_confirms_keeps_its_record() -> None:
    # Serve's choose_replica + dispatch path reserves a slot and never calls on_request_routed.
    async def scenario() -> None:
        router = new_router()
        replicas = [FakeReplica("a", 0), FakeReplica("b", 3)]
        request = completion("the same long system prompt " * 10)
        hashes = prompt_chunk_hashes(prompt_bytes(request), router.policy.prefix_chunk_bytes)
        assert chosen_ids(await router.choose_replicas(replicas, pending(request))) == [["a"]]
        assert router.prefixes.longest_match(hashes, {"a", "b"}) == "a"

    asyncio.run(scenario())


def test_a_retried_request_hashes_its_prompt_once() -> None:
    async def scenario() -> None:
        router = new_router()
        replicas = [FakeReplica("a", 8), FakeReplica("b", 8)]
        request = pending(completion("long prompt " * 20))
        key = request.metadata.internal_request_id
        # Every replica full: tries come back empty and Serve asks again for the same request.
        assert await router.choose_replicas(replicas, request) == []
        first_hashes = router.pending_hashes[key]
        assert await router.choose_replicas(replicas, request) == []
        assert router.pending_hashes[key] is first_hashes  # the same list: not hashed again
        replicas[0].num_ongoing = 0
        assert await route(router, replicas, request) == [["a"]]
        # Routed: its hashes are dropped, and they are in the index.
        assert router.pending_hashes == {}
        assert len(router.prefixes) == len(first_hashes) > 0

    asyncio.run(scenario())


def test_prompts_of_requests_never_routed_are_kept_for_a_bounded_number_of_requests() -> None:
    async def scenario() -> None:
        router = new_router(max_pending_prompts=3)
        replicas = [FakeReplica("a", 8)]
        requests = [pending(completion(f"prompt {i} " * 20)) for i in range(5)]
        for request in requests:  # each tried once, then cancelled
            await router.choose_replicas(replicas, request)
        # The oldest dropped.
        assert list(router.pending_hashes) == [request.metadata.internal_request_id for request in requests[2:]]

    asyncio.run(scenario())


def test_adapter_weighs_the_engines_sequences_from_routing_stats() -> None:
    async def scenario() -> list[list[str]]:
        router = new_router(prefix_affinity=False)
        # Both hold two requests; "a"'s have n=4 choices each.
        replicas = [
            FakeReplica("a", 2, kv_usage=0.0, num_sequences=8.0, num_requests=2.0),
            FakeReplica("b", 2, kv_usage=0.0, num_sequences=2.0, num_requests=2.0),
        ]
        return await route(router, replicas, pending(completion("hi")))

    assert asyncio.run(scenario()) == [["b"]]


def test_adapter_keeps_no_prompt_without_prefix_affinity() -> None:
    async def scenario() -> tuple[int, int]:
        router = new_router(prefix_affinity=False)
        replicas = [FakeReplica("a", 0)]
        await route(router, replicas, pending(completion("long prompt " * 20)))
        return len(router.pending_hashes), len(router.prefixes)

    assert asyncio.run(scenario()) == (0, 0)


def test_prefix_undo_restores_previous_replicas_and_spares_later_records() -> None:
    index = PrefixIndex(capacity=16)
    index.record([b"h1"], "a")
    previous = index.record([b"h1", b"h2", b"h3"], "b")
    assert previous == {b"h1": "a", b"h2": None, b"h3": None}
    index.record([b"h3"], "c")  # recorded again since: that record stands
    index.undo("b", previous)
    assert [index.longest_match([h], {"a", "b", "c"}) for h in (b"h1", b"h2", b"h3")] == ["a", None, "c"]
    assert len(index) == 2
