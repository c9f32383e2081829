"""Traffic for the scenarios: good and mixed requests, closed and open loops."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks.soak.client import Shot, fire
from benchmarks.soak.ledger import Entry, Outcome

__all__ = [
    "Target",
    "closed_loop",
    "good_shot",
    "mixed_shot",
    "new_client",
    "open_loop",
    "successful_tokens_per_s",
]

_WORDS = "the of and to in is that it was for on are as with his they at be this from have or by one".split()


@dataclass(frozen=True)
class Target:
    """The app under test: its URL, one of its models, and where its engines' gauges are read."""

    base_url: str
    model: str
    metrics_url: str
    # Each replica's KV pool (the model's num_kv_blocks), to turn usage shares into blocks.
    blocks_per_replica: int
    # Longest an answer may take before it counts as hung.
    hang_after_s: float = 60.0
    # Sent with every good request: the tenant's API key.
    headers: dict[str, str] = field(default_factory=dict)


def new_client(target: Target, max_connections: int = 512) -> httpx.AsyncClient:
    # Timeouts are the scenario's own (fire's bound), not httpx's.
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=target.base_url, timeout=None, limits=limits)


def good_shot(
    target: Target,
    rng: random.Random,
    max_tokens: int,
    abort_after_chunks: int | None = None,
    abort_after_s: float | None = None,
) -> Shot:
    """A streamed completion of exactly `max_tokens` tokens (ignore_eos) on a short random prompt,
    hung up on as the Shot says."""
    prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))
    body = {
        "model": target.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    return Shot("/v1/completions", body, target.headers, abort_after_chunks, abort_after_s)


# Shared by the prefix-sharing requests of the mixed traffic: long enough to fill KV blocks.
_SHARED_PREFIX = " ".join(_WORDS * 6)


def mixed_shot(target: Target, rng: random.Random, max_tokens: int) -> Shot:
    """One of the mixed run's kinds, at random: a stream, a stream the client cancels part way, an
    answer of two choices, a request on the shared prefix, a chat completion."""
    kind = rng.randrange(5)
    if kind == 0:
        return good_shot(target, rng, max_tokens)
    if kind == 1:
        return good_shot(target, rng, max_tokens, abort_after_chunks=rng.randrange(max_tokens))
    prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))
    body: dict[str, object] = {"model": target.model, "max_tokens": max_tokens, "ignore_eos": True}
    if kind == 2:
        body |= {"prompt": prompt, "n": 2, "temperature": 0.8, "seed": rng.randrange(2**31)}
    elif kind == 3:
        body |= {"prompt": f"{_SHARED_PREFIX} {prompt}", "temperature": 0}
    else:
        body |= {"messages": [{"role": "user", "content": prompt}], "temperature": 0}
        return Shot("/v1/chat/completions", body, target.headers)
    return Shot("/v1/completions", body, target.headers)


async def closed_loop(
    client: httpx.AsyncClient, target: Target, make_shot: Callable[[], Shot], concurrency: int, seconds: float
) -> tuple[list[Entry], float]:
    """`concurrency` clients each sending one request after another for `seconds`; the entries and
    the time they took (the last requests finish after the deadline)."""
    entries: list[Entry] = []
    start = time.monotonic()

    async def one_client() -> None:
        while time.monotonic() - start < seconds:
            entries.append(await fire(client, make_shot(), target.hang_after_s))

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return entries, time.monotonic() - start


async def open_loop(
    client: httpx.AsyncClient, target: Target, make_shot: Callable[[], Shot], rate: float, seconds: float
) -> list[Entry]:
    """Requests sent at `rate` per second for `seconds`, whether or not earlier ones were answered.
    The period is bounded by time, not by a count: a client that falls behind sends fewer (the
    entries say how many went out)."""
    tasks: list[asyncio.Task[Entry]] = []
    start = time.monotonic()
    while (due := len(tasks) / rate) < seconds:
        await asyncio.sleep(max(0.0, due - (time.monotonic() - start)))
        if time.monotonic() - start >= seconds:
            break
        tasks.append(asyncio.create_task(fire(client, make_shot(), target.hang_after_s)))
    return list(await asyncio.gather(*tasks))


def successful_tokens_per_s(entries: list[Entry], seconds: float) -> float:
    return sum(entry.tokens for entry in entries if entry.outcome is Outcome.OK) / seconds
