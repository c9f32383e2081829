"""The soak suite's short run (benchmarks/soak): every scenario against the soak app (two models,
two Router replicas, tenants in a real Redis); every ledger must pass its scenario's rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray import serve

from benchmarks.soak.app import new_api_key, soak_app_args
from benchmarks.soak.ledger import format_ledgers
from benchmarks.soak.scenarios import SHORT
from benchmarks.soak.suite import SCENARIOS, run_scenario, soak_target
from benchmarks.soak.traffic import Target
from deployments.app import build_app
from tests.serve.conftest import ServeCluster
from tests.services import RedisServer

APP = "soak"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("soak-redis"), appendfsync="everysec")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def target(serve_cluster: ServeCluster, store: RedisServer) -> Iterator[Target]:
    url = serve_cluster.deploy(APP, build_app(soak_app_args(serve_cluster.demo_root / APP, store.url)))
    yield soak_target(url, f"http://127.0.0.1:{serve_cluster.metrics_port}/metrics", new_api_key(store.url))
    serve.delete(APP)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes_its_rules(scenario: str, target: Target, store: RedisServer) -> None:
    ledger, rules = run_scenario(scenario, APP, target, SHORT, store)
    print(format_ledgers([(ledger, rules)]), ledger.figures)
    assert ledger.failures(rules) == [], ledger.figures
