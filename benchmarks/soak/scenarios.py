"""The scenarios: each drives the target, keeps a ledger of every request, and states its rules.

overload          capacity measured first, then 10x that rate for a sustained period: only
                  answers and 429/503 with Retry-After; accepted requests complete; p99 TTFT of
                  accepted requests bounded; the serving processes' memory flat from the
                  first third of the period to the last
disconnect storm  streams aborted before the first token, mid stream and at the last token:
                  the engines back to zero KV blocks and requests, others' throughput unharmed
bad input         hand-made nasties while good requests run: every refusal a 4xx in OpenAI's
                  shape, no 5xx, the good requests answered
replica killed    a model replica (or a tensor-parallel shard) SIGKILLed under load: in-flight
                  streams end with an error event or a 5xx, nothing hangs or is lost, Serve
                  replaces it (recovery timed)
router killed     one of two Router replicas SIGKILLed under load: its requests end with a
                  connection error or a 5xx, the other Router's complete, Serve replaces it
store down        the tenants store stopped under traffic and started again: 503s with
                  Retry-After meanwhile, nothing crashes, every answer's spend counted once,
                  service back by itself (recovery timed)
schema fuzz       schemathesis's requests from the live server's OpenAPI document while good
                  requests run: no 5xx, every 4xx in OpenAI's shape
mixed             streams, cancels, n > 1, a shared prefix and chats for a long period, the
                  serving processes' memory and open files sampled: no growth beyond the bounds
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
from benchmarks.soak.engine_state import read_holdings, wait_until_idle
from benchmarks.soak.fuzz import fuzz
from benchmarks.soak.ledger import Entry, Ledger, Outcome, Rules
from benchmarks.soak.processes import ProcessSample, serving_processes, serving_rss_bytes
from benchmarks.soak.traffic import (
    Target,
    closed_loop,
    good_shot,
    mixed_shot,
    new_client,
    open_loop,
    successful_tokens_per_s,
)
from tests.services import RedisServer

__all__ = [
    "LONG",
    "SHORT",
    "Sizes",
    "bad_input",
    "disconnect_storm",
    "mixed",
    "nasty_shots",
    "overload",
    "process_killed",
    "router_killed",
    "schema_fuzz",
    "store_down",
]

_MIB = 2**20
# Memory a serving process may grow by over a scenario before it counts as growth: allocator and
# import noise, not a leak.
_RSS_SLACK_BYTES = 96 * _MIB
_RSS_SLACK_SHARE = 0.15
# Open files a serving process may gain over the mixed run: connections come and go under load.
_OPEN_FILES_SLACK = 32
# The error code of a request the tenant gate refused because the store was unreachable.
_STORE_UNAVAILABLE = "store_unavailable"


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
    store_down_s: float
    fuzz_examples_per_operation: int
    mixed_s: float
    sample_every_s: float


# The TTFT bound: on a 2-core machine the client, Serve's proxy, the Router and both engines share
# the cores, and at 10x capacity the proxy's and Router's event loops fall behind (p99 TTFT 25 s
# measured); accepted requests then wait for them, not for the engines. The bound is below the
# Router's own first-token timeout (60 s), so no accepted request is near being timed out.
SHORT = Sizes(
    measure_s=3, overload_s=12, overload_factor=10, max_tokens=16, storm_streams=120, storm_concurrency=32,
    kill_streams=8, max_p99_ttft_s=45, max_recovery_s=120, store_down_s=5, fuzz_examples_per_operation=15,
    mixed_s=16, sample_every_s=4,
)  # fmt: skip
LONG = Sizes(
    measure_s=20, overload_s=300, overload_factor=10, max_tokens=32, storm_streams=1000, storm_concurrency=64,
    kill_streams=16, max_p99_ttft_s=45, max_recovery_s=180, store_down_s=20, fuzz_examples_per_operation=150,
    mixed_s=1800, sample_every_s=60,
)  # fmt: skip


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
    offered = len(ledger.entries) / sizes.overload_s
    ledger.figures |= {"capacity req/s": capacity, "target req/s": rate, "offered req/s": offered,
                       "answered req/s": goodput}  # fmt: skip
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
    # Hung up on before the answer (within the first 300 ms), after the first token, mid stream,
    # at the last token.
    points = [None, 1, sizes.max_tokens // 2, sizes.max_tokens - 1]
    async with new_client(target) as client:
        baseline = await _throughput(client, target, sizes, rng)
        semaphore = asyncio.Semaphore(sizes.storm_concurrency)

        async def aborted_stream() -> Entry:
            point = rng.choice(points)
            early_s = rng.uniform(0.0, 0.3) if point is None else None
            async with semaphore:
                return await fire(client, good_shot(target, rng, sizes.max_tokens, point, early_s), target.hang_after_s)

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
    """Every nasty once (each must be refused with a 4xx), a slowloris connection held open, and good
    requests all the while."""
    ledger = Ledger("bad input")
    rng = random.Random(3)
    async with new_client(target) as client:
        slow = asyncio.create_task(_slowloris(target.base_url, seconds=sizes.measure_s))
        good = asyncio.create_task(
            closed_loop(client, target, lambda: good_shot(target, rng, sizes.max_tokens), 2, sizes.measure_s)
        )
        for shot in nasty_shots(target.model, target.headers):
            entry = await fire(client, shot, target.hang_after_s)
            ledger.add(entry)
            if entry.outcome is not Outcome.CLIENT_ERROR:
                body = shot.body if isinstance(shot.body, bytes) else json.dumps(shot.body).encode()
                ledger.problems.append(f"{shot.path} {body[:80]!r} was not refused with a 4xx: {entry.outcome.value}")
        good_entries, _ = await good
        for entry in good_entries:
            ledger.add(entry)
        await slow
    _check_idle(ledger, target)
    if not any(entry.outcome is Outcome.OK for entry in good_entries):
        ledger.problems.append("no good request was answered during the bad input")
    return ledger, Rules(frozenset({Outcome.OK, Outcome.CLIENT_ERROR}))


async def process_killed(
    target: Target, sizes: Sizes, scenario: str, pid: int, recovered: Callable[[], bool]
) -> tuple[Ledger, Rules]:
    """Streams in flight on every replica of the target's model, then SIGKILL of `pid` (a replica, or
    one of its shards); traffic goes on until `recovered()` (Serve runs every replica again, the
    killed one replaced) and a request is answered, or `max_recovery_s`."""
    ledger = Ledger(scenario)
    in_flight_entries, killed_at, recovered_at, _ = await _kill_under_load(
        target, sizes, random.Random(4), ledger, pid, recovered
    )
    if not any(entry.outcome in (Outcome.STREAM_ERROR, Outcome.SERVER_ERROR) for entry in in_flight_entries):
        ledger.problems.append("no stream in flight was on the killed process (none ended with an error)")
    _note_recovery(ledger, sizes, killed_at, recovered_at)
    _check_idle(ledger, target)
    allowed = frozenset({Outcome.OK, Outcome.STREAM_ERROR, Outcome.SERVER_ERROR, Outcome.UNAVAILABLE})
    return ledger, Rules(allowed)


async def router_killed(
    target: Target, sizes: Sizes, router_pid: int, recovered: Callable[[], bool]
) -> tuple[Ledger, Rules]:
    """Streams in flight through both Router replicas, then SIGKILL of `router_pid`: its requests end
    with a connection error or a 5xx from Serve's proxy, the other Router's complete and it keeps
    answering new ones while Serve replaces the killed one (`recovered()`)."""
    ledger = Ledger("router killed")
    in_flight_entries, killed_at, recovered_at, answered_meanwhile = await _kill_under_load(
        target, sizes, random.Random(5), ledger, router_pid, recovered
    )
    broken = (Outcome.CONNECTION_ERROR, Outcome.SERVER_ERROR, Outcome.STREAM_ERROR)
    if not any(entry.outcome in broken for entry in in_flight_entries):
        ledger.problems.append("no stream in flight was on the killed Router (none ended with an error)")
    if not any(entry.outcome is Outcome.OK for entry in in_flight_entries):
        ledger.problems.append("no stream in flight completed: the other Router's were cut too")
    ledger.figures["answered while replacing"] = answered_meanwhile
    if answered_meanwhile == 0:
        ledger.problems.append("no new request was answered while the killed Router was replaced")
    _note_recovery(ledger, sizes, killed_at, recovered_at)
    _check_idle(ledger, target)
    return ledger, Rules(frozenset({Outcome.OK, *broken, Outcome.UNAVAILABLE}), shapeless_5xx_allowed=True)


async def store_down(
    target: Target, sizes: Sizes, store: RedisServer, routers: Callable[[], list[int]]
) -> tuple[Ledger, Rules]:
    """Traffic while the tenants store is stopped for `store_down_s` and started again: refusals are
    503s with Retry-After, the Routers (`routers()`: their pids) do not crash, the tenant's usage grows
    by exactly the requests the Routers admitted (none counted twice, none dropped), and service
    comes back by itself."""
    ledger = Ledger("store down")
    rng = random.Random(6)
    routers_before = sorted(routers())
    async with new_client(target) as client:
        usage_before = await _usage(client, target, ledger)
        stop_traffic = asyncio.Event()

        async def one_client() -> None:
            while not stop_traffic.is_set():
                ledger.add(await fire(client, good_shot(target, rng, sizes.max_tokens), target.hang_after_s))
                await asyncio.sleep(0.1)

        clients = [asyncio.create_task(one_client()) for _ in range(4)]
        try:
            await asyncio.sleep(sizes.measure_s)
            await asyncio.to_thread(store.stop)
            await asyncio.sleep(sizes.store_down_s)
        finally:
            # Started again whatever happened: the scenarios after this one need the store.
            await asyncio.to_thread(store.start)
        restarted_at = time.monotonic()
        recovered_at = await _first_answer_after(ledger, len(ledger.entries), sizes.max_recovery_s)
        await asyncio.sleep(sizes.measure_s)
        stop_traffic.set()
        await asyncio.gather(*clients)
        _note_recovery(ledger, sizes, restarted_at, recovered_at, "after the store restarted")
        # A request refused for any other reason (a 503 first-token timeout, say) had passed the
        # tenant's admission: its reservation is settled and counted too.
        admitted = sum(entry.code != _STORE_UNAVAILABLE for entry in ledger.entries)
        usage_after = await _settled_usage(client, target, ledger, usage_before, admitted)
    if usage_before is not None and usage_after is not None:
        _check_usage(ledger, sizes, usage_before, usage_after, admitted)
    if not any(entry.code == _STORE_UNAVAILABLE for entry in ledger.entries):
        ledger.problems.append("no request was refused with store_unavailable while the store was down")
    if sorted(routers()) != routers_before:
        ledger.problems.append(f"the Routers' processes changed from {routers_before} to {sorted(routers())}")
    _check_idle(ledger, target)
    return ledger, Rules(frozenset({Outcome.OK, Outcome.UNAVAILABLE}))


def _check_usage(
    ledger: Ledger, sizes: Sizes, before: dict[str, int], after: dict[str, int], admitted: int
) -> None:
    answered = sum(entry.outcome is Outcome.OK for entry in ledger.entries)
    counted = after["requests"] - before["requests"]
    tokens = after["completion_tokens"] - before["completion_tokens"]
    ledger.figures |= {"answered": answered, "admitted": admitted, "usage counted": counted}
    # Every answered request generated exactly max_tokens (ignore_eos); the others none.
    if counted != admitted or tokens != answered * sizes.max_tokens:
        ledger.problems.append(
            f"usage counted {counted} requests and {tokens} tokens for {admitted} admitted, "
            f"{answered} answered with {sizes.max_tokens} tokens each"
        )


async def schema_fuzz(target: Target, sizes: Sizes) -> tuple[Ledger, Rules]:
    """The schema fuzzer against the live server while good requests run alongside."""
    ledger = Ledger("schema fuzz")
    rng = random.Random(7)
    async with new_client(target) as client:
        stop_good = asyncio.Event()

        async def good_traffic() -> list[Entry]:
            entries = []
            while not stop_good.is_set():
                entries.append(await fire(client, good_shot(target, rng, sizes.max_tokens), target.hang_after_s))
            return entries

        good = asyncio.create_task(good_traffic())
        fuzzed = await asyncio.to_thread(
            fuzz, target.base_url, target.model, target.headers, sizes.fuzz_examples_per_operation
        )
        stop_good.set()
        good_entries = await good
    for entry in fuzzed + good_entries:
        ledger.add(entry)
    ledger.figures["fuzzed requests"] = len(fuzzed)
    if not any(entry.outcome is Outcome.OK for entry in good_entries):
        ledger.problems.append("no good request was answered during the fuzzing")
    _check_idle(ledger, target)
    return ledger, Rules(frozenset({Outcome.OK, Outcome.CLIENT_ERROR}))


async def mixed(
    target: Target, sizes: Sizes, concurrency: int, others: tuple[Target, ...] = ()
) -> tuple[Ledger, Rules]:
    """`concurrency` clients sending mixed requests for `mixed_s`, to the target's model and the
    `others` (models of the same app) at random; the serving processes sampled every
    `sample_every_s` while the traffic runs: memory and open files from the sample halfway through
    to the last may grow by the slack only, and no process may go. The first half warms the
    processes up to the load: a shard group an earlier scenario replaced serves its first requests
    here, and its allocators grow to the mix's shapes (110 MiB in 12 s measured), which is not a
    leak; a leak goes on growing in the second half."""
    ledger = Ledger("mixed")
    rng = random.Random(8)
    targets = (target, *others)
    samples: list[dict[str, ProcessSample]] = []
    async with new_client(target) as client:

        def next_shot() -> Shot:
            return mixed_shot(rng.choice(targets), rng, sizes.max_tokens)

        traffic = asyncio.create_task(closed_loop(client, target, next_shot, concurrency, sizes.mixed_s))
        # Samples under load only: the last one before the clients stop.
        for _ in range(int(sizes.mixed_s // sizes.sample_every_s)):
            await asyncio.sleep(sizes.sample_every_s)
            if traffic.done():
                break
            samples.append(await asyncio.to_thread(serving_processes))
        entries, _ = await traffic
    for entry in entries:
        ledger.add(entry)
    ledger.figures["samples"] = len(samples)
    if len(samples) < 2:
        ledger.problems.append(f"{len(samples)} samples under load: growth cannot be judged")
    else:
        _check_growth(ledger, samples[len(samples) // 2 - 1], samples[-1])
    for each in targets:
        _check_idle(ledger, each)
    return ledger, Rules(frozenset({Outcome.OK, Outcome.ABORTED}))


def _check_growth(ledger: Ledger, first: dict[str, ProcessSample], last: dict[str, ProcessSample]) -> None:
    for name in first.keys() - last.keys():
        ledger.problems.append(f"{name} is gone")
    _check_memory(ledger, {name: sample.rss_bytes for name, sample in first.items()},
                  {name: sample.rss_bytes for name, sample in last.items()})  # fmt: skip
    for name, start in first.items():
        end = last.get(name)
        if end is None:
            continue
        ledger.figures[f"open files {name}"] = end.open_files
        if end.open_files - start.open_files > _OPEN_FILES_SLACK:
            ledger.problems.append(f"{name} went from {start.open_files} to {end.open_files} open files")


def nasty_shots(model: str, headers: dict[str, str]) -> list[Shot]:
    """Bad requests a fuzzer rarely writes: sizes, nesting, encodings and values at the edges, and
    keys that are missing or not keys; `headers` (the API key) on all the others."""
    path = "/v1/completions"
    body = {"model": model, "prompt": "hi"}
    deep = "[" * 100_000 + "]" * 100_000
    messages = [{"role": "user", "content": "hi"}] * 5_000
    shots = [
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
    keyless = [
        Shot(path, body),
        Shot(path, body, {"Authorization": "Bearer sy-not-a-key"}),
        Shot(path, body, {"Authorization": "Basic " + "A" * 10_000}),
    ]
    return [Shot(shot.path, shot.body, headers) for shot in shots] + keyless


async def _kill_under_load(
    target: Target, sizes: Sizes, rng: random.Random, ledger: Ledger, pid: int, recovered: Callable[[], bool]
) -> tuple[list[Entry], float, float | None, int]:
    """Long streams in flight, SIGKILL of `pid`, then traffic until `recovered()`: the in-flight
    streams' entries (also added to the ledger), when the kill was, when recovery was (None: not
    within `max_recovery_s`), and how many requests were answered before it."""
    async with new_client(target) as client:
        in_flight = await _start_long_streams(client, target, sizes, rng)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        recovered_at, answered_before = await _traffic_until(client, target, sizes, rng, ledger, recovered)
        in_flight_entries = list(await asyncio.gather(*in_flight))
    for entry in in_flight_entries:
        ledger.add(entry)
    return in_flight_entries, killed_at, recovered_at, answered_before


async def _start_long_streams(
    client: httpx.AsyncClient, target: Target, sizes: Sizes, rng: random.Random
) -> list[asyncio.Task[Entry]]:
    """`kill_streams` streams long enough to be generating when a process is killed; returns once
    the engines hold them all (or after 20 s)."""
    in_flight = [
        asyncio.create_task(fire(client, good_shot(target, rng, sizes.max_tokens * 16), target.hang_after_s))
        for _ in range(sizes.kill_streams)
    ]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        holdings = await asyncio.to_thread(read_holdings, target.metrics_url, target.model, target.blocks_per_replica)
        if holdings.requests >= sizes.kill_streams:
            break
        await asyncio.sleep(0.2)
    return in_flight


async def _traffic_until(
    client: httpx.AsyncClient,
    target: Target,
    sizes: Sizes,
    rng: random.Random,
    ledger: Ledger,
    recovered: Callable[[], bool],
) -> tuple[float | None, int]:
    """Requests one after another until one is answered with `recovered()` true: when that was (None
    after `max_recovery_s`), and how many were answered before it (while not yet recovered)."""
    start = time.monotonic()
    answered_before = 0
    while time.monotonic() - start < sizes.max_recovery_s:
        entry = await fire(client, good_shot(target, rng, sizes.max_tokens), target.hang_after_s)
        ledger.add(entry)
        if entry.outcome is Outcome.OK:
            if await asyncio.to_thread(recovered):
                return time.monotonic(), answered_before
            answered_before += 1
        await asyncio.sleep(0.5)
    return None, answered_before


async def _first_answer_after(ledger: Ledger, index: int, deadline_s: float) -> float | None:
    """When the first answer among the ledger's entries from `index` on came (None: not within
    `deadline_s`), while others add to the ledger."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if any(entry.outcome is Outcome.OK for entry in ledger.entries[index:]):
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


def _note_recovery(
    ledger: Ledger, sizes: Sizes, since: float, recovered_at: float | None, what: str = "after the kill"
) -> None:
    if recovered_at is None:
        ledger.problems.append(f"service did not recover within {sizes.max_recovery_s:.0f} s {what}")
    else:
        ledger.figures["recovery s"] = recovered_at - since


async def _usage(client: httpx.AsyncClient, target: Target, ledger: Ledger) -> dict[str, int] | None:
    """The tenant's usage of the target's model (zeros before its first request); None, with a
    problem noted, when it cannot be read."""
    response = await client.get("/v1/usage", headers=target.headers)
    if response.status_code != 200:
        ledger.problems.append(f"GET /v1/usage answered {response.status_code}: {response.text[:160]}")
        return None
    for model in response.json()["models"]:
        if model["model"] == target.model:
            return {"requests": model["requests"], "completion_tokens": model["completion_tokens"]}
    return {"requests": 0, "completion_tokens": 0}


async def _settled_usage(
    client: httpx.AsyncClient, target: Target, ledger: Ledger, before: dict[str, int] | None, admitted: int
) -> dict[str, int] | None:
    """The usage once `admitted` more requests are counted (settles retried after the store came
    back land within seconds), or as it stands after 30 s."""
    if before is None:
        return None
    deadline = time.monotonic() + 30
    while True:
        usage = await _usage(client, target, ledger)
        if usage is None or usage["requests"] - before["requests"] >= admitted or time.monotonic() > deadline:
            return usage
        await asyncio.sleep(0.5)


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
