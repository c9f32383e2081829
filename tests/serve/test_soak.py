"""The soak suite's short run (benchmarks/soak): overload, a disconnect storm, bad input and a
killed replica against one app of two replicas; every ledger must pass its scenario's rules."""

from __future__ import annotations

import asyncio
import functools

import pytest

from benchmarks.soak.app import (
    MAX_NUM_SEQS,
    MODEL,
    NUM_KV_BLOCKS,
    REPLICAS,
    replaced,
    replica_pids,
    soak_app_args,
)
from benchmarks.soak.ledger import Ledger, Rules, format_ledgers
from benchmarks.soak.scenarios import SHORT, bad_input, disconnect_storm, overload, replica_killed
from benchmarks.soak.traffic import Target
from deployments.app import build_app
from tests.serve.conftest import ServeCluster

APP = "soak"


@pytest.fixture(scope="module")
def target(serve_cluster: ServeCluster) -> Target:
    url = serve_cluster.deploy(APP, build_app(soak_app_args(serve_cluster.demo_root / APP)))
    return Target(url, MODEL, f"http://127.0.0.1:{serve_cluster.metrics_port}/metrics", NUM_KV_BLOCKS)


def passes(result: tuple[Ledger, Rules]) -> None:
    ledger, rules = result
    print(format_ledgers([result]), ledger.figures)
    assert ledger.failures(rules) == [], ledger.figures


def test_overload_is_refused_with_retry_after_and_every_accepted_request_completes(target: Target) -> None:
    passes(asyncio.run(overload(target, SHORT, concurrency=REPLICAS * MAX_NUM_SEQS)))


def test_a_disconnect_storm_leaves_no_kv_block_or_request_behind(target: Target) -> None:
    passes(asyncio.run(disconnect_storm(target, SHORT)))


def test_bad_input_gets_openai_shaped_4xx_while_good_requests_are_served(target: Target) -> None:
    passes(asyncio.run(bad_input(target, SHORT)))


def test_a_killed_replica_ends_its_streams_with_errors_and_is_replaced(target: Target) -> None:
    pids = replica_pids(APP)
    assert len(pids) == REPLICAS
    passes(asyncio.run(replica_killed(target, SHORT, pids[0], functools.partial(replaced, APP, pids[0]))))
    assert pids[0] not in replica_pids(APP)
