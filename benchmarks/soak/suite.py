"""The scenarios by name, against the soak app (benchmarks/soak/app.py) deployed as `app`: what
`python -m benchmarks.soak` and the short run in `make test` both call."""

from __future__ import annotations

import asyncio
import dataclasses
import functools

from benchmarks.soak.app import (
    MAX_NUM_SEQS,
    MODEL,
    NUM_KV_BLOCKS,
    NUM_TP_KV_BLOCKS,
    REPLICAS,
    ROUTERS,
    TP_MODEL,
    replaced,
    replica_pids,
    router_pids,
    shard_pids,
)
from benchmarks.soak.ledger import Ledger, Rules
from benchmarks.soak.scenarios import (
    Sizes,
    bad_input,
    disconnect_storm,
    mixed,
    overload,
    process_killed,
    router_killed,
    schema_fuzz,
    store_down,
)
from benchmarks.soak.traffic import Target
from tests.services import RedisServer

__all__ = ["SCENARIOS", "run_scenario", "soak_target"]

SCENARIOS = (
    "overload",
    "disconnect-storm",
    "bad-input",
    "schema-fuzz",
    "replica-killed",
    "shard-killed",
    "router-killed",
    "store-down",
    "mixed",
)


def soak_target(app_url: str, metrics_url: str, api_key: str) -> Target:
    return Target(app_url, MODEL, metrics_url, NUM_KV_BLOCKS, headers={"Authorization": f"Bearer {api_key}"})


def run_scenario(name: str, app: str, target: Target, sizes: Sizes, store: RedisServer) -> tuple[Ledger, Rules]:
    """Run scenario `name` (one of SCENARIOS) to its ledger and rules."""
    if name == "overload":
        return asyncio.run(overload(target, sizes, concurrency=REPLICAS * MAX_NUM_SEQS))
    if name == "disconnect-storm":
        return asyncio.run(disconnect_storm(target, sizes))
    if name == "bad-input":
        return asyncio.run(bad_input(target, sizes))
    if name == "schema-fuzz":
        return asyncio.run(schema_fuzz(target, sizes))
    if name == "replica-killed":
        (pid, *_) = replica_pids(app)
        recovered = functools.partial(replaced, app, f"LLMServer:{MODEL}", REPLICAS, pid)
        return asyncio.run(process_killed(target, sizes, "replica killed", pid, recovered))
    tp_target = dataclasses.replace(target, model=TP_MODEL, blocks_per_replica=NUM_TP_KV_BLOCKS)
    if name == "shard-killed":
        deployment = f"LLMServer:{TP_MODEL}"
        (replica_pid,) = replica_pids(app, deployment)
        shard_pid = shard_pids(app)[1]
        recovered = functools.partial(replaced, app, deployment, 1, replica_pid)
        return asyncio.run(process_killed(tp_target, sizes, "shard killed", shard_pid, recovered))
    if name == "router-killed":
        (pid, *_) = router_pids(app)
        return asyncio.run(router_killed(target, sizes, pid, functools.partial(replaced, app, "Router", ROUTERS, pid)))
    if name == "store-down":
        return asyncio.run(store_down(target, sizes, store, functools.partial(router_pids, app)))
    if name == "mixed":
        return asyncio.run(mixed(target, sizes, concurrency=REPLICAS * MAX_NUM_SEQS // 2, others=(tp_target,)))
    raise ValueError(f"no scenario {name!r}: one of {', '.join(SCENARIOS)}")
