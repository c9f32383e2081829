"""`python -m benchmarks.soak [--long]`: serve the soak app on this machine and run the scenarios.

Starts a redis-server for the tenants store and a local Ray (its metrics reported every second on a
free port) with Serve on 127.0.0.1, deploys benchmarks/soak/app.py's app, writes the tenant's key,
runs every scenario of benchmarks/soak/suite.py (`--scenario` to pick), prints one ledger row per
scenario with its figures, and exits 1 if any scenario fails its rules. `--long` takes the long
sizes (the mixed run alone is 30 minutes); the default short ones are what `make test` runs
(tests/serve/test_soak.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from benchmarks.soak.app import new_api_key, soak_app_args
from benchmarks.soak.ledger import Ledger, Rules, format_ledgers
from benchmarks.soak.scenarios import LONG, SHORT, Sizes
from benchmarks.soak.suite import SCENARIOS, run_scenario, soak_target
from benchmarks.soak.traffic import Target
from deployments.app import build_app
from tests.services import RedisServer, free_port

_APP = "soak"
_READY_TIMEOUT_S = 300
_WORKER_NICENESS = 15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", action="store_true", help="the long sizes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    args = parser.parse_args(argv)
    sizes = LONG if args.long else SHORT
    metrics_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as directory:
        store = RedisServer(Path(directory) / "redis", appendfsync="everysec")
        store.start()
        # The workers' logs stay in Ray's session folder: printed here, they would cost this client
        # (the driver) a share of the two cores the platform under test needs.
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port,
                 _system_config={"metrics_report_interval_ms": 1000})  # fmt: skip
        # Ray runs its workers (the proxy, the Routers, the engines) at niceness 15: this client
        # takes the same once Ray's own processes have started (they inherit it), so that on one
        # machine it has no priority over the platform it measures. (The store-down scenario's
        # restarted redis-server inherits it too.)
        os.nice(max(0, _WORKER_NICENESS - os.nice(0)))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
            serve.run(build_app(soak_app_args(Path(directory) / "demo", store.url)), name=_APP, route_prefix=f"/{_APP}")
            url = f"http://127.0.0.1:{http_port}/{_APP}"
            _wait_until_answering(f"{url}/health")
            target = soak_target(url, f"http://127.0.0.1:{metrics_port}/metrics", new_api_key(store.url))
            results = [_run(name, target, sizes, store) for name in args.scenario or SCENARIOS]
        finally:
            serve.shutdown()
            ray.shutdown()
            store.stop()
    print(format_ledgers(results))
    failed = False
    for ledger, rules in results:
        figures = ", ".join(f"{name} {value:.2f}" for name, value in ledger.figures.items())
        print(f"{ledger.scenario}: {figures}")
        for failure in ledger.failures(rules):
            failed = True
            print(f"  FAIL {failure}")
    return 1 if failed else 0


def _run(name: str, target: Target, sizes: Sizes, store: RedisServer) -> tuple[Ledger, Rules]:
    """The scenario's ledger; one that could not run (a process not found, say) gets a ledger with
    that problem, so the scenarios after it still run."""
    try:
        return run_scenario(name, _APP, target, sizes, store)
    except Exception as error:  # noqa: BLE001 - any failure is this scenario's, reported in its row
        ledger = Ledger(name)
        ledger.problems.append(f"the scenario failed: {type(error).__name__}: {error}")
        return ledger, Rules(frozenset())


def _wait_until_answering(url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {_READY_TIMEOUT_S} s")
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
