"""How a request picks one of a model's LLMServer replicas: pure functions of plain data.

    ongoing requests  (probed afresh for this request) ─┐
    engine sequences, kv_usage (routing stats, once per period) ─┴─▶ score
    prompt ─▶ chained chunk hashes ─▶ PrefixIndex ─▶ affine replica (got the longest known prefix)

    choice: the affine replica unless its score exceeds the lowest by more than imbalance_threshold,
    else the lowest score (ties at random); never a full replica while another has room.

No Ray here: `deployments.routing.serve_router` feeds this what Serve knows about the replicas.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from autoscaling import LoadSignals
from deployments.generation import GenerationRequest

__all__ = [
    "PrefixIndex",
    "ReplicaCandidate",
    "RoutingPolicy",
    "choose_replica",
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
    # Requests whose prompt hashes are kept between routing tries; a request cancelled before it
    # was routed leaves its entry behind, so the oldest are dropped beyond this many.
    max_pending_prompts: int = 4096

    def __post_init__(self) -> None:
        if self.imbalance_threshold < 0:
            raise ValueError(f"imbalance_threshold must be >= 0, got {self.imbalance_threshold}")
        if self.kv_usage_weight < 0:
            raise ValueError(f"kv_usage_weight must be >= 0, got {self.kv_usage_weight}")
        if self.prefix_chunk_bytes < 1:
            raise ValueError(f"prefix_chunk_bytes must be >= 1, got {self.prefix_chunk_bytes}")
        if self.max_prefix_chunks < 1:
            raise ValueError(f"max_prefix_chunks must be >= 1, got {self.max_prefix_chunks}")
        if self.max_pending_prompts < 1:
            raise ValueError(f"max_pending_prompts must be >= 1, got {self.max_pending_prompts}")


@dataclass(frozen=True)
class ReplicaCandidate:
    """What routing knows of one replica when it routes a request."""

    # Serve's unique id of the replica.
    replica_id: str
    # Requests in the replica now (running or queued in it), from a probe made for this request.
    num_ongoing: int
    # Requests the replica accepts at once (the deployment's max_ongoing_requests).
    max_ongoing: int
    # The replica's last routing stats (a period old at most); None before its first report (a new
    # replica, whose engine is empty).
    signals: LoadSignals | None = None

    @property
    def has_room(self) -> bool:
        return self.num_ongoing < self.max_ongoing

    @property
    def kv_usage(self) -> float:
        return 0.0 if self.signals is None else min(max(self.signals.kv_usage, 0.0), 1.0)

    @property
    def num_sequences(self) -> float:
        """Engine sequences the replica's ongoing requests amount to: the fresh count of requests
        times the sequences per request of its last report (a request with n choices counts n)."""
        per_request = 1.0 if self.signals is None else self.signals.sequences_per_request
        return self.num_ongoing * per_request


def load_score(candidate: ReplicaCandidate, kv_usage_weight: float) -> float:
    """How loaded a replica is, in engine sequences; lower is better.

    The fresh count of ongoing requests says how many requests a new one shares the batch with, but
    counts a request with n choices once; the periodic routing stats say how many sequences each
    request is, so the score scales the fresh count by that (a period-old report can thus never
    make a replica with no request look busy). Neither says how big the requests are; KV usage
    does: a replica whose pool is nearly full must hold a new prompt back or preempt a sequence to
    fit it. Weighting it by a few requests lets it separate replicas with similar counts without
    ever outweighing a real difference in queue depth.
    """
    return candidate.num_sequences + kv_usage_weight * candidate.kv_usage


def choose_replica(
    candidates: list[ReplicaCandidate], affine_replica_id: str | None, policy: RoutingPolicy, rng: random.Random
) -> str | None:
    """The replica for one request, or None when every candidate is full."""
    scores = {c.replica_id: load_score(c, policy.kv_usage_weight) for c in candidates if c.has_room}
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
        # A named message renders differently, so its name is part of the prefix.
        pairs = [
            [message.role, message.content] if message.name is None else [message.role, message.content, message.name]
            for message in request.messages
        ]
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

    def record(self, hashes: list[bytes], replica_id: str) -> dict[bytes, str | None]:
        """The prompt with these hashes was sent to `replica_id`. Returns each hash's previous
        replica (None where it had none), which `undo` restores."""
        previous: dict[bytes, str | None] = {}
        if not hashes:
            return previous
        for chunk_hash in hashes:
            previous[chunk_hash] = self._replica_by_hash.get(chunk_hash)
            self._replica_by_hash[chunk_hash] = replica_id
            self._replica_by_hash.move_to_end(chunk_hash)
        self._replica_ids.add(replica_id)
        while len(self._replica_by_hash) > self.capacity:
            self._replica_by_hash.popitem(last=False)
        return previous

    def undo(self, replica_id: str, previous: dict[bytes, str | None]) -> None:
        """Take back a `record` for `replica_id` (it never got the prompt): each hash it still
        holds goes back to its previous replica, or is forgotten if it had none."""
        for chunk_hash, previous_id in previous.items():
            if self._replica_by_hash.get(chunk_hash) != replica_id:
                continue  # recorded again since, or evicted: that record stands
            if previous_id is None:
                del self._replica_by_hash[chunk_hash]
            else:
                self._replica_by_hash[chunk_hash] = previous_id

    def keep_only(self, replica_ids: Collection[str]) -> None:
        """Forget the prefixes of replicas not in `replica_ids` (gone, and their caches with them)."""
        if self._replica_ids.issubset(replica_ids):
            return
        gone = [chunk_hash for chunk_hash, owner in self._replica_by_hash.items() if owner not in replica_ids]
        for chunk_hash in gone:
            del self._replica_by_hash[chunk_hash]
        self._replica_ids.intersection_update(replica_ids)
