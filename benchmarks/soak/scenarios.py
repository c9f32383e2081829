"""The scenarios: each drives the target, keeps a ledger of every request, and states its rules.

overload          capacity measured first, then 10x that rate for a sustained period: only
                  answers and 429/503 with Retry-After; accepted requests complete; p99 TTFT of
                  accepted requests bounded; the serving processes' memory flat from the
                  first third of the period to the last
disconnect storm  streams aborted before the first token, mid stream and at the last token:
                  the engines back to zero KV blocks and requests, others' throughput unharmed
bad input         hand-made nasties while good requests run: every refusal a 4xx in OpenAI's
                  shape, no 5xx, the good requests answered
replica killed    one model replica SIGKILLed under load: in-flight streams end with an error
                  event or a 5xx, nothing hangs or is lost, Serve replaces it (recovery timed)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from benchmarks.soak.client import Shot, fire
from benchmarks.soak.engine_state import wait_until_idle
from benchmarks.soak.ledger import Entry, Ledger, Outcome, Rules
from benchmarks.soak.traffic import (
    Target,
    closed_loop,
    good_shot,
    new_client,
    open_loop,
    serving_rss_bytes,
    successful_tokens_per_s,
)

__all__ = ["LONG", "SHORT", "Sizes", "bad_input", "disconnect_storm", "nasty_shots", "overload", "replica_killed"]

_MIB = 2**20
# Memory a serving process may grow by over a scenario before it counts as growth: allocator and
# import noise, not a leak.
_RSS_SLACK_BYTES = 96 * _MIB
_RSS_SLACK_SHARE = 0.15


@dataclass(frozen=True)
class Sizes:
    """How long and how much: `short` for `make test`, `long` for the documented run."""

    measure_s: float
    overload_s: float
    overload_factor: float
    max_tokens: int
    storm_streams: int
    storm_concurrency: int
    kill_streams: int
    # Bounds: p99 TTFT of accepted requests under overload, recovery after a replica is killed.
    max_p99_ttft_s: float
    max_recovery_s: float


# The TTFT bound: on a 2-core machine the client, Serve's proxy, the Router and both engines share
# the cores, and at 10x capacity the proxy's and Router's event loops fall behind (p99 TTFT 25 s
# measured); accepted requests then wait for them, not for the engines. The bound is below the
# Router's own first-token timeout (60 s), so no accepted request is near being timed out.
SHORT = Sizes(4, 18, 10, 16, 120, 32, 8, 45, 120)
LONG = Sizes(20, 300, 10, 32, 1000, 64, 16, 45, 180)


async def overload(target: Target, sizes: Sizes, concurrency: int) -> tuple[Ledger, Rules]:
    """Capacity with `concurrency` closed-loop clients (the replicas' batch), then `overload_factor`
    times that request rate, open loop."""
    ledger = Ledger("overload")
    rng = random.Random(1)
    async with new_client(target) as client:
        measured, seconds = await closed_loop(
            client, target, lambda: good_shot(target, rng, sizes.max_tokens), concurrency, sizes.measure_s
        )
        capacity = sum(entry.outcome is Outcome.OK for entry in measured) / seconds
        if capacity == 0:
            ledger.problems.append(f"no request completed while measuring capacity: {measured[:1]}")
            return ledger, Rules(frozenset())
        rate = sizes.overload_factor * capacity
        # In three phases: memory after the first (allocators warmed up to the load) against after
        # the last, so growth that goes on under a steady load shows.
        rss_after_phase = []
        for _ in range(3):
            for entry in await open_loop(
                client, target, lambda: good_shot(target, rng, sizes.max_tokens), rate, sizes.overload_s / 3
            ):
                ledger.add(entry)
            rss_after_phase.append(serving_rss_bytes())
    goodput = sum(entry.outcome is Outcome.OK for entry in ledger.entries) / sizes.overload_s
    ledger.figures |= {"capacity req/s": capacity, "offered req/s": rate, "answered req/s": goodput}
    if goodput < capacity / 4:
        ledger.problems.append(f"{goodput:.1f} req/s answered under overload, below a quarter of capacity")
    _check_memory(ledger, rss_after_phase[0], rss_after_phase[-1])
    _check_idle(ledger, target)
    allowed = frozenset({Outcome.OK, Outcome.RATE_LIMITED, Outcome.UNAVAILABLE})
    return ledger, Rules(allowed, sizes.max_p99_ttft_s)


async def disconnect_storm(target: Target, sizes: Sizes) -> tuple[Ledger, Rules]:
    """`storm_streams` streams, each hung up before its first token, mid stream or at its last
    token; others' throughput measured before and after."""
    ledger = Ledger("disconnect storm")
    rng = random.Random(2)
    points = [0, 1, sizes.max_tokens // 2, sizes.max_tokens - 1]
    async with new_client(target) as client:
        baseline = await _throughput(client, target, sizes, rng)
        semaphore = asyncio.Semaphore(sizes.storm_concurrency)

        async def aborted_stream() -> Entry:
            async with semaphore:
                return await fire(
                    client, good_shot(target, rng, sizes.max_tokens, rng.choice(points)), target.hang_after_s
                )

        for entry in await asyncio.gather(*(aborted_stream() for _ in range(sizes.storm_streams))):
            ledger.add(entry)
        _check_idle(ledger, target)
        after = await _throughput(client, target, sizes, rng)
    ledger.figures |= {"tokens/s before": baseline, "tokens/s after": after}
    if after < 0.7 * baseline:
        ledger.problems.append(f"others' throughput fell from {baseline:.1f} to {after:.1f} tokens/s after the storm")
    # A stream whose hang-up point came after its last chunk completes: that is an answer too. A
    # refusal (429 with Retry-After) is no loss: aborted streams leave the Router's count as the
    # Router notices the hang-up, a moment later.
    return ledger, Rules(frozenset({Outcome.OK, Outcome.ABORTED, Outcome.RATE_LIMITED}))


async def bad_input(target: Target, sizes: Sizes) -> tuple[Ledger, Rules]:
    """Every nasty once, a slowloris connection held open, and good requests all the while."""
    ledger = Ledger("bad input")
    rng = random.Random(3)
    async with new_client(target) as client:
        slow = asyncio.create_task(_slowloris(target.base_url, seconds=sizes.measure_s))
        good = asyncio.create_task(
            closed_loop(client, target, lambda: good_shot(target, rng, sizes.max_tokens), 2, sizes.measure_s)
        )
        for shot in nasty_shots(target.model):
            ledger.add(await fire(client, shot, target.hang_after_s))
        good_entries, _ = await good
        for entry in good_entries:
            ledger.add(entry)
        await slow
    _check_idle(ledger, target)
    if not any(entry.outcome is Outcome.OK for entry in good_entries):
        ledger.problems.append("no good request was answered during the bad input")
    return ledger, Rules(frozenset({Outcome.OK, Outcome.CLIENT_ERROR}))


async def replica_killed(
    target: Target, sizes: Sizes, replica_pid: int, replicas_ready: Callable[[], bool]
) -> tuple[Ledger, Rules]:
    """Streams in flight on every replica, then SIGKILL of `replica_pid`; traffic goes on until
    `replicas_ready()` (Serve runs every replica again, the killed one replaced) and a request is
    answered, or `max_recovery_s`."""
    ledger = Ledger("replica killed")
    rng = random.Random(4)
    long_tokens = sizes.max_tokens * 16
    async with new_client(target) as client:
        in_flight = [
            asyncio.create_task(fire(client, good_shot(target, rng, long_tokens), target.hang_after_s))
            for _ in range(sizes.kill_streams)
        ]
        await asyncio.sleep(2.0)  # every stream admitted and generating
        killed_at = time.monotonic()
        os.kill(replica_pid, signal.SIGKILL)
        recovered_at = None
        while time.monotonic() - killed_at < sizes.max_recovery_s:
            entry = await fire(client, good_shot(target, rng, sizes.max_tokens), target.hang_after_s)
            ledger.add(entry)
            if recovered_at is None and entry.outcome is Outcome.OK and replicas_ready():
                recovered_at = time.monotonic()
                break
            await asyncio.sleep(0.5)
        in_flight_entries = await asyncio.gather(*in_flight)
        for entry in in_flight_entries:
            ledger.add(entry)
    if not any(entry.outcome in (Outcome.STREAM_ERROR, Outcome.SERVER_ERROR) for entry in in_flight_entries):
        ledger.problems.append("no stream in flight was on the killed replica (none ended with an error)")
    if recovered_at is None:
        ledger.problems.append(f"Serve did not run every replica again within {sizes.max_recovery_s:.0f} s")
    else:
        ledger.figures["recovery s"] = recovered_at - killed_at
    _check_idle(ledger, target)
    allowed = frozenset({Outcome.OK, Outcome.STREAM_ERROR, Outcome.SERVER_ERROR, Outcome.UNAVAILABLE})
    return ledger, Rules(allowed)


def nasty_shots(model: str) -> list[Shot]:
    """Bad requests a fuzzer rarely writes: sizes, nesting, encodings and values at the edges."""
    path = "/v1/completions"
    deep = "[" * 100_000 + "]" * 100_000
    messages = [{"role": "user", "content": "hi"}] * 5_000
    return [
        Shot(path, b""),
        Shot(path, b"{not json"),
        Shot(path, b'{"model": "' + model.encode() + b'", "prompt": "\xff\xfe\xfa"}'),
        Shot(path, ('{"model": "%s", "prompt": %s}' % (model, deep)).encode()),
        Shot(path, json.dumps({"model": model, "prompt": "x" * 20_000_000}).encode()),
        Shot(path, {"model": model, "prompt": [10**9, -5, 3]}),
        Shot(path, {"model": model, "prompt": [[1, 2], "mixed"]}),
        Shot(path, b'{"model": "' + model.encode() + b'", "prompt": "hi", "temperature": NaN}'),
        Shot(path, b'{"model": "' + model.encode() + b'", "prompt": "hi", "top_p": Infinity}'),
        Shot(path, {"model": model, "prompt": "hi", "stop": "s" * 100_000}),
        Shot(path, {"model": model, "prompt": "hi", "max_tokens": -1}),
        Shot(path, {"model": model, "prompt": "hi", "max_tokens": 10**12}),
        Shot(path, {"model": model, "prompt": "hi", "n": 10**6}),
        Shot(path, {"model": model, "prompt": "hi", "logprobs": 10**6}),
        Shot(path, {"model": model, "prompt": "hi", "logit_bias": {"999999999": 5}}),
        Shot(path, {"model": "no-such-model", "prompt": "hi"}),
        Shot(path, {"prompt": "hi"}),
        Shot(path, {"model": model, "prompt": {"nested": "object"}}),
        Shot("/v1/chat/completions", {"model": model, "messages": messages}),
        Shot("/v1/chat/completions", {"model": model, "messages": [{"role": "wizard", "content": "hi"}]}),
        Shot("/v1/chat/completions", {"model": model, "messages": "not a list"}),
        Shot(path, {"model": model, "prompt": "hi", "seed": 2**70}),
        Shot(path, {"model": model, "prompt": "hi", "stream": "yes"}),
    ]


async def _throughput(client: httpx.AsyncClient, target: Target, sizes: Sizes, rng: random.Random) -> float:
    entries, seconds = await closed_loop(
        client, target, lambda: good_shot(target, rng, sizes.max_tokens), 8, sizes.measure_s
    )
    return successful_tokens_per_s(entries, seconds)


async def _slowloris(base_url: str, seconds: float) -> None:
    """A client that sends its request a byte at a time, holding a connection for `seconds`."""
    address = urlsplit(base_url)
    path = (address.path or "") + "/v1/completions"
    loop = asyncio.get_running_loop()
    with socket.create_connection((address.hostname, address.port or 80), timeout=5) as connection:
        connection.setblocking(False)
        head = f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: application/json\r\n"
        await loop.sock_sendall(connection, (head + "Content-Length: 100000\r\n\r\n").encode())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                await loop.sock_sendall(connection, b" ")
            except OSError:
                return  # the server closed it: fine too
            await asyncio.sleep(0.5)


def _check_memory(ledger: Ledger, before: dict[str, int], after: dict[str, int]) -> None:
    for name, start in before.items():
        end = after.get(name)
        if end is None:
            continue
        ledger.figures[f"RSS MiB {name}"] = end / _MIB
        if end - start > max(_RSS_SLACK_BYTES, _RSS_SLACK_SHARE * start):
            ledger.problems.append(f"{name} grew from {start / _MIB:.0f} to {end / _MIB:.0f} MiB")


def _check_idle(ledger: Ledger, target: Target) -> None:
    holdings = wait_until_idle(target.metrics_url, target.model, target.blocks_per_replica, deadline_s=30)
    if holdings.replicas_seen == 0:
        ledger.problems.append(f"no engine gauge of {target.model!r} at {target.metrics_url}: leaks unknown")
    ledger.leaked_blocks = max(ledger.leaked_blocks, holdings.kv_blocks)
    ledger.leaked_requests = max(ledger.leaked_requests, holdings.requests)
