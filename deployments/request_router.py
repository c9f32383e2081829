"""LLMRequestRouter: how a model's deployment handle picks the LLMServer replica for each request.

    ongoing requests  (probed afresh for this request) ─┐
    kv_usage          (routing stats, once per period)  ─┴─▶ score = ongoing + kv_usage_weight * kv_usage
    prompt ─▶ chained chunk hashes ─▶ PrefixIndex ─▶ affine replica (last sent the longest known prefix)

    choice: the affine replica unless its score exceeds the lowest by more than imbalance_threshold,
    else the lowest score (ties at random); never a full replica while another has room.

A deployment uses it through Serve's request router config, whose kwargs Serve hands, once per
handle, to `initialize_state` (so each process holding a handle keeps its own prefix knowledge):

    RequestRouterConfig(
        request_router_class="deployments.request_router:LLMRequestRouter",
        request_router_kwargs={"prefix_affinity": True, "imbalance_threshold": 4.0},
        request_routing_stats_period_s=1.0,
    )

The decision is pure (`RoutingPolicy`, `ReplicaLoad`, `choose_replica`, `PrefixIndex`); the class at
the bottom only feeds it what Serve knows about the replicas.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.generation import GenerationRequest

__all__ = [
    "LLMRequestRouter",
    "PrefixIndex",
    "ReplicaLoad",
    "RoutingPolicy",
    "choose_replica",
    "kv_usage_of",
    "load_score",
    "prompt_bytes",
    "prompt_chunk_hashes",
]


@dataclass(frozen=True)
class RoutingPolicy:
    """The router's settings: `request_router_kwargs`, validated on construction."""

    # Send a prompt to the replica that last got its longest known prefix (its KV blocks are likely
    # still cached there), within `imbalance_threshold`.
    prefix_affinity: bool = True
    # How much higher than the lowest score the affine replica's may be, in ongoing requests: the
    # prefill that a cached prefix saves is worth waiting behind this many more requests.
    imbalance_threshold: float = 4.0
    # What a full KV pool adds to a score, in ongoing requests (see `load_score`).
    kv_usage_weight: float = 4.0
    # Bytes of serialised prompt per hashed chunk: 64 bytes is about one 16-token KV block of text,
    # and exactly 16 token ids (see `prompt_bytes`).
    prefix_chunk_bytes: int = 64
    # Most chunk hashes remembered; the least recently sent are forgotten first. Each costs about
    # 150 bytes, so the default holds ~10 MB.
    max_prefix_chunks: int = 65536

    def __post_init__(self) -> None:
        if self.imbalance_threshold < 0:
            raise ValueError(f"imbalance_threshold must be >= 0, got {self.imbalance_threshold}")
        if self.kv_usage_weight < 0:
            raise ValueError(f"kv_usage_weight must be >= 0, got {self.kv_usage_weight}")
        if self.prefix_chunk_bytes < 1:
            raise ValueError(f"prefix_chunk_bytes must be >= 1, got {self.prefix_chunk_bytes}")
        if self.max_prefix_chunks < 1:
            raise ValueError(f"max_prefix_chunks must be >= 1, got {self.max_prefix_chunks}")


@dataclass(frozen=True)
class ReplicaLoad:
    # Serve's unique id of the replica.
    replica_id: str
    # Requests in the replica now (running or queued in it), from a probe made for this request.
    num_ongoing: int
    # Requests the replica accepts at once (the deployment's max_ongoing_requests).
    max_ongoing: int
    # Share of the replica's KV blocks in use, 0..1, from its last routing stats (0 before any).
    kv_usage: float

    @property
    def has_room(self) -> bool:
        return self.num_ongoing < self.max_ongoing


def load_score(load: ReplicaLoad, kv_usage_weight: float) -> float:
    """How loaded a replica is, in ongoing requests; lower is better.

    The fresh count of ongoing requests says how many requests a new one shares the batch with, but
    not how big they are. KV usage does: a replica whose pool is nearly full must hold a new prompt
    back or preempt a sequence to fit it. It comes from the periodic routing stats, so it may be a
    period old; weighting it by a few requests lets it separate replicas with similar counts without
    ever outweighing a real difference in queue depth.
    """
    return load.num_ongoing + kv_usage_weight * load.kv_usage


def kv_usage_of(routing_stats: Mapping[str, Any]) -> float:
    """`kv_usage` from a replica's routing stats, in 0..1; 0 while it has reported none (a replica
    that has not yet reported is new, and a new replica's pool is empty)."""
    value = routing_stats.get("kv_usage")
    if not isinstance(value, (int, float)) or math.isnan(value):
        return 0.0
    return min(max(float(value), 0.0), 1.0)


def choose_replica(
    loads: list[ReplicaLoad], affine_replica_id: str | None, policy: RoutingPolicy, rng: random.Random
) -> str | None:
    """The replica for one request, or None when every replica in `loads` is full."""
    scores = {load.replica_id: load_score(load, policy.kv_usage_weight) for load in loads if load.has_room}
    if not scores:
        return None
    lowest = min(scores.values())
    if affine_replica_id in scores and scores[affine_replica_id] - lowest <= policy.imbalance_threshold:
        return affine_replica_id
    return rng.choice(sorted(replica_id for replica_id, score in scores.items() if score == lowest))


def prompt_bytes(request: GenerationRequest) -> bytes:
    """The request's prompt as bytes in which a shared prompt prefix is a shared byte prefix.

    Each kind gets its own tag, since the engine sees a chat through its template: text is UTF-8;
    token ids are 4 bytes each; a chat is its (role, content) pairs as compact JSON, so a conversation
    that grows keeps its earlier serialisation up to the closing bracket.
    """
    if request.messages is not None:
        pairs = [[message.role, message.content] for message in request.messages]
        return b"chat:" + json.dumps(pairs, ensure_ascii=False, separators=(",", ":")).encode()
    if isinstance(request.prompt, str):
        return b"text:" + request.prompt.encode()
    token_ids = request.prompt or []
    # Masked to 32 bits so any int packs (ids out of the vocabulary are refused later, by the engine).
    return b"ids:" + b"".join((token_id & 0xFFFFFFFF).to_bytes(4, "little") for token_id in token_ids)


def prompt_chunk_hashes(data: bytes, chunk_bytes: int) -> list[bytes]:
    """One hash per full chunk of `data`, each over the previous hash and the chunk (as KV blocks are
    hashed): equal i-th hashes mean equal first i chunks. A trailing partial chunk is left out."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, len(data) - chunk_bytes + 1, chunk_bytes):
        previous = hashlib.blake2b(previous + data[start : start + chunk_bytes], digest_size=16).digest()
        hashes.append(previous)
    return hashes


class PrefixIndex:
    """Which replica each prompt prefix (a chained chunk hash) was last sent to, least recently sent
    forgotten first once there are `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._replica_by_hash: OrderedDict[bytes, str] = OrderedDict()  # least recently sent first
        # Replicas that may have entries: lets `keep_only` skip its scan when none has gone.
        self._replica_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._replica_by_hash)

    def longest_match(self, hashes: list[bytes], replica_ids: Collection[str]) -> str | None:
        """The replica, among `replica_ids`, that got the longest prefix of the prompt with these
        hashes. Every hash is tried, deepest first: eviction may have dropped a shallower one."""
        for chunk_hash in reversed(hashes):
            replica_id = self._replica_by_hash.get(chunk_hash)
            if replica_id is not None and replica_id in replica_ids:
                return replica_id
        return None

    def record(self, hashes: list[bytes], replica_id: str) -> None:
        """The prompt with these hashes was sent to `replica_id`."""
        if not hashes:
            return
        for chunk_hash in hashes:
            self._replica_by_hash[chunk_hash] = replica_id
            self._replica_by_hash.move_to_end(chunk_hash)
        self._replica_ids.add(replica_id)
        while len(self._replica_by_hash) > self.capacity:
            self._replica_by_hash.popitem(last=False)

    def keep_only(self, replica_ids: Collection[str]) -> None:
        """Forget the prefixes of replicas not in `replica_ids` (gone, and their caches with them)."""
        if self._replica_ids.issubset(replica_ids):
            return
        gone = [chunk_hash for chunk_hash, owner in self._replica_by_hash.items() if owner not in replica_ids]
        for chunk_hash in gone:
            del self._replica_by_hash[chunk_hash]
        self._replica_ids.intersection_update(replica_ids)


class LLMRequestRouter(RequestRouter):
    """Serve's adapter around `choose_replica`: probes, stats and the prefix index in, one replica out."""

    # Set by initialize_state, which Serve calls before any routing.
    policy: RoutingPolicy
    prefixes: PrefixIndex
    rng: random.Random

    def initialize_state(self, **kwargs: Any) -> None:
        """Serve calls this once, right after construction, with `request_router_kwargs`."""
        self.policy = RoutingPolicy(**kwargs)
        self.prefixes = PrefixIndex(self.policy.max_prefix_chunks)
        self.rng = random.Random()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """One try: the chosen replica as the only rank, or nothing (Serve backs off and asks again)."""
        if pending_request is not None:
            # Every try weighs every replica, so a retry can only wait for load to change: back off.
            pending_request.routing_context.should_backoff = True
        hashes = self._prompt_hashes(pending_request)
        # Fresh counts for all replicas (Serve's probe also refreshes its queue-length cache, which it
        # checks again before sending, and drops replicas whose actor died).
        probed = await self._probe_queue_lens(candidate_replicas, 0)
        # Requests routed at the same instant probe the same counts; Serve's cache counts the ones it
        # sent since, so the larger of the two keeps a burst from piling onto one replica.
        cached = self.replica_queue_len_cache
        loads = [
            ReplicaLoad(
                replica.replica_id.unique_id,
                max(num_ongoing, cached.get(replica.replica_id) or 0),
                replica.max_ongoing_requests,
                kv_usage_of(replica.routing_stats),
            )
            for replica, num_ongoing in probed
            if num_ongoing is not None
        ]
        affine_replica_id = self.prefixes.longest_match(hashes, {load.replica_id for load in loads})
        chosen = choose_replica(loads, affine_replica_id, self.policy, self.rng)
        if chosen is None:
            # No fresh count shows room. Replicas that did not answer in time go to Serve, which
            # probes them again with a longer deadline and only sends to one with room (its choice is
            # not known here, so no prefix is recorded).
            unanswered = [replica for replica, num_ongoing in probed if num_ongoing is None]
            return [unanswered] if unanswered else []
        self.prefixes.record(hashes, chosen)
        return [[replica for replica, _ in probed if replica.replica_id.unique_id == chosen]]

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.prefixes.keep_only({replica.replica_id.unique_id for replica in replicas})

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.prefixes.keep_only({live_id.unique_id for live_id in self.curr_replicas})

    def _prompt_hashes(self, pending_request: PendingRequest | None) -> list[bytes]:
        """The prompt's chunk hashes for a `generate` call; none for other methods or without affinity."""
        if not self.policy.prefix_affinity or pending_request is None or not pending_request.args:
            return []
        request = pending_request.args[0]
        if not isinstance(request, GenerationRequest):
            return []
        return prompt_chunk_hashes(prompt_bytes(request), self.policy.prefix_chunk_bytes)
