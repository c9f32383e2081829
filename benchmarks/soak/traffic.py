"""Traffic for the scenarios: good requests, closed and open loops, and the serving processes' memory."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psutil

from benchmarks.soak.client import Shot, fire
from benchmarks.soak.ledger import Entry, Outcome

__all__ = [
    "Target",
    "closed_loop",
    "good_shot",
    "new_client",
    "open_loop",
    "serving_rss_bytes",
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


def new_client(target: Target, max_connections: int = 512) -> httpx.AsyncClient:
    # Timeouts are the scenario's own (fire's bound), not httpx's.
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=target.base_url, timeout=None, limits=limits)


def good_shot(target: Target, rng: random.Random, max_tokens: int, abort_after_chunks: int | None = None) -> Shot:
    """A streamed completion of exactly `max_tokens` tokens (ignore_eos) on a short random prompt."""
    prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24)))
    body = {
        "model": target.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    return Shot("/v1/completions", body, abort_after_chunks=abort_after_chunks)


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
    """Requests sent at `rate` per second for `seconds`, whether or not earlier ones were answered."""
    tasks: list[asyncio.Task[Entry]] = []
    start = time.monotonic()
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        tasks.append(asyncio.create_task(fire(client, make_shot(), target.hang_after_s)))
    return list(await asyncio.gather(*tasks))


def serving_rss_bytes() -> dict[str, int]:
    """Resident memory of each Serve replica process on this machine (the Routers' and the models'),
    by process title, with their engine processes added to their replicas'."""
    rss: dict[str, int] = {}
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if "ServeReplica:" not in title:
            continue
        try:
            total = process.memory_info().rss + sum(child.memory_info().rss for child in process.children())
        except psutil.Error:
            continue
        name = f"{title.split('ServeReplica:', 1)[1].split()[0]} (pid {process.pid})"
        rss[name] = total
    return rss


def successful_tokens_per_s(entries: list[Entry], seconds: float) -> float:
    return sum(entry.tokens for entry in entries if entry.outcome is Outcome.OK) / seconds
