"""LLMRequestRouter: Serve's adapter around the pure routing policy (`deployments.routing.policy`).

A deployment uses it through Serve's request router config, whose kwargs Serve hands, once per
handle, to `initialize_state` (so each process holding a handle keeps its own prefix knowledge):

    RequestRouterConfig(
        request_router_class="deployments.routing.serve_router:LLMRequestRouter",
        request_router_kwargs={"prefix_affinity": True, "imbalance_threshold": 4.0},
        request_routing_stats_period_s=1.0,
    )

Per try: fresh queue probes and the replicas' last routing stats in, one replica out. The prompt
is hashed once per request, not once per try (the hashes are kept until Serve reports the request
routed).

A prompt's prefix is recorded for the chosen replica provisionally. Serve asks again for the same
request only when the try failed (the replica rejected it, or its reservation was refused): that
retry first takes the provisional record back, restoring the replicas the prefix pointed at
before, so affinity never points at a replica that did not get the prompt. `on_request_routed`
(Serve's acceptance on its send path) makes the record final; Serve's reservation path
(`choose_replica` + `dispatch`) reports no acceptance, and there the record simply stands.

"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from autoscaling import LoadSignals
from deployments.generation import GenerationRequest
from deployments.routing.policy import (
    PrefixIndex,
    ReplicaCandidate,
    RoutingPolicy,
    choose_replica,
    prompt_bytes,
    prompt_chunk_hashes,
)

__all__ = ["LLMRequestRouter"]

class LLMRequestRouter(RequestRouter):
    """Probes, stats and the prefix index in, `choose_replica`'s pick out."""

    # Set by initialize_state, which Serve calls before any routing.
    policy: RoutingPolicy
    prefixes: PrefixIndex
    rng: random.Random
    # Internal request id -> its prompt's chunk hashes, from its first try until it is routed.
    pending_hashes: OrderedDict[str, list[bytes]]
    # Internal request id -> the replica its last try recorded the prefix for, and the replicas the
    # prefix pointed at before (what a retry restores).
    provisional: dict[str, tuple[str, dict[bytes, str | None]]]

    def initialize_state(self, **kwargs: Any) -> None:
        """Serve calls this once, right after construction, with `request_router_kwargs`."""
        self.policy = RoutingPolicy(**kwargs)
        self.prefixes = PrefixIndex(self.policy.max_prefix_chunks)
        self.rng = random.Random()
        self.pending_hashes = OrderedDict()
        self.provisional = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """One try: the chosen replica as the only rank, or nothing (Serve backs off and asks again)."""
        if pending_request is not None:
            # Every try weighs every replica, so a retry can only wait for load to change: back off.
            pending_request.routing_context.should_backoff = True
        hashes = self._prompt_hashes(pending_request)
        key = None if pending_request is None else pending_request.metadata.internal_request_id
        self._take_back_failed_try(key)
        # Fresh counts for all replicas (Serve's probe also refreshes its queue-length cache, which it
        # checks again before sending, and drops replicas whose actor died).
        probed = await self._probe_queue_lens(candidate_replicas, 0)
        # Requests routed at the same instant probe the same counts; Serve's cache counts the ones it
        # sent since, so the larger of the two keeps a burst from piling onto one replica.
        cached = self.replica_queue_len_cache
        candidates = [
            ReplicaCandidate(
                replica.replica_id.unique_id,
                max(num_ongoing, cached.get(replica.replica_id) or 0),
                replica.max_ongoing_requests,
                LoadSignals.from_metrics(replica.routing_stats),
            )
            for replica, num_ongoing in probed
            if num_ongoing is not None
        ]
        affine_replica_id = self.prefixes.longest_match(hashes, {c.replica_id for c in candidates})
        chosen = choose_replica(candidates, affine_replica_id, self.policy, self.rng)
        if chosen is None:
            # No fresh count shows room. Replicas that did not answer in time go to Serve, which
            # probes them again with a longer deadline and only sends to one with room.
            unanswered = [replica for replica, num_ongoing in probed if num_ongoing is None]
            return [unanswered] if unanswered else []
        if hashes and key is not None:
            self.provisional[key] = (chosen, self.prefixes.record(hashes, chosen))
        return [[replica for replica, _ in probed if replica.replica_id.unique_id == chosen]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """Serve calls this once the replica accepted the request: its prefix record is final."""
        key = pending_request.metadata.internal_request_id
        self.pending_hashes.pop(key, None)
        self.provisional.pop(key, None)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.prefixes.keep_only({replica.replica_id.unique_id for replica in replicas})

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.prefixes.keep_only({live_id.unique_id for live_id in self.curr_replicas})

    def _take_back_failed_try(self, key: str | None) -> None:
        """A request asked about again had its last try fail: that replica never got the prompt."""
        tried = None if key is None else self.provisional.pop(key, None)
        if tried is not None:
            replica_id, previous = tried
            self.prefixes.undo(replica_id, previous)

    def _prompt_hashes(self, pending_request: PendingRequest | None) -> list[bytes]:
        """The prompt's chunk hashes for a `generate` call, computed on its first try; none for
        other methods or without affinity."""
        if not self.policy.prefix_affinity or pending_request is None or not pending_request.args:
            return []
        request = pending_request.args[0]
        if not isinstance(request, GenerationRequest):
            return []
        key = pending_request.metadata.internal_request_id
        hashes = self.pending_hashes.get(key)
        if hashes is None:
            hashes = prompt_chunk_hashes(prompt_bytes(request), self.policy.prefix_chunk_bytes)
            self.pending_hashes[key] = hashes
            while len(self.pending_hashes) > self.policy.max_pending_prompts:
                oldest, _ = self.pending_hashes.popitem(last=False)
                self.provisional.pop(oldest, None)
        return hashes
