"""`python -m benchmarks.soak [--long]`: serve the soak app on this machine and run the scenarios.

Starts a local Ray (its metrics reported every second on a free port) and Serve on 127.0.0.1,
deploys benchmarks/soak/app.py's app, runs overload, disconnect storm, bad input and replica killed
(`--scenario` to pick), prints one ledger row per scenario with its figures, and exits 1 if any
scenario fails its rules. `--long` takes the long sizes (minutes per scenario); the default short
ones are what `make test` runs (tests/serve/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve

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
from benchmarks.soak.scenarios import LONG, SHORT, Sizes, bad_input, disconnect_storm, overload, replica_killed
from benchmarks.soak.traffic import Target
from deployments.app import build_app

_APP = "soak"
_SCENARIOS = ("overload", "disconnect-storm", "bad-input", "replica-killed")
_READY_TIMEOUT_S = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", action="store_true", help="the long sizes")
    parser.add_argument("--scenario", action="append", choices=_SCENARIOS, help="run only these (repeatable)")
    args = parser.parse_args(argv)
    sizes = LONG if args.long else SHORT
    metrics_port, http_port = _free_port(), _free_port()
    ray.init(num_cpus=8, include_dashboard=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        with tempfile.TemporaryDirectory() as demo_dir:
            serve.run(build_app(soak_app_args(Path(demo_dir))), name=_APP, route_prefix=f"/{_APP}")
            url = f"http://127.0.0.1:{http_port}/{_APP}"
            _wait_until_answering(f"{url}/health")
            target = Target(url, MODEL, f"http://127.0.0.1:{metrics_port}/metrics", NUM_KV_BLOCKS)
            results = [_run(name, target, sizes) for name in args.scenario or _SCENARIOS]
    finally:
        serve.shutdown()
        ray.shutdown()
    print(format_ledgers(results))
    failed = False
    for ledger, rules in results:
        figures = ", ".join(f"{name} {value:.2f}" for name, value in ledger.figures.items())
        print(f"{ledger.scenario}: {figures}")
        for failure in ledger.failures(rules):
            failed = True
            print(f"  FAIL {failure}")
    return 1 if failed else 0


def _run(name: str, target: Target, sizes: Sizes) -> tuple[Ledger, Rules]:
    if name == "overload":
        return asyncio.run(overload(target, sizes, concurrency=REPLICAS * MAX_NUM_SEQS))
    if name == "disconnect-storm":
        return asyncio.run(disconnect_storm(target, sizes))
    if name == "bad-input":
        return asyncio.run(bad_input(target, sizes))
    (pid, *_) = replica_pids(_APP)
    return asyncio.run(replica_killed(target, sizes, pid, functools.partial(replaced, _APP, pid)))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
