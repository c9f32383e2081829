"""One Ray instance and one Serve HTTP proxy for the whole test session; apps deployed once each.

Apps are built exactly as `serve run <manifest>` builds them: the manifest's args through
`deployments.app:build_app`, each under its own route prefix. Demo models are written into the
session's temporary directory.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.serve import Application

from deployments.app import build_app

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0


def manifest_args(name: str, demo_root: Path) -> dict[str, Any]:
    """A manifest's build_app args, with every demo model written under `demo_root`."""
    config = yaml.safe_load((REPO_ROOT / "manifests" / name).read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    for model in args["models"]:
        if "demo" in model["source"]:
            model["source"]["demo_dir"] = str(demo_root / model["name"])
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(url: str, deadline_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200: the proxy learns new routes a little after deploy."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {deadline_s}s")
        time.sleep(0.2)


class ServeCluster:
    def __init__(self, base_url: str, demo_root: Path, metrics_port: int) -> None:
        self.base_url = base_url
        self.demo_root = demo_root
        # The node's metrics export port: what Prometheus scrapes.
        self.metrics_port = metrics_port

    def demo_app_args(self, name: str, engine: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
        """build_app args for one demo Llama called `name`, written under the session's directory."""
        source = {"demo": "llama", "demo_dir": str(self.demo_root / name)}
        return {"models": [{"name": name, "source": source, "engine": engine, "deployment": deployment}]}

    def deploy(self, name: str, app: Application) -> str:
        """Run `app` under /<name>; returns its base URL once it answers."""
        serve.run(app, name=name, route_prefix=f"/{name}")
        url = f"{self.base_url}/{name}"
        wait_until_answering(f"{url}/health")
        return url


@pytest.fixture(scope="session")
def serve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    # Logical CPUs: enough for every replica of every test app; the machine has what it has.
    # Metrics are reported every second (Ray's default is 10 s), so a scrape soon sees the traffic.
    metrics_port = _free_port()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}},
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeCluster(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("demo-models"), metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def multi_model_app(serve_cluster: ServeCluster) -> str:
    """manifests/multi-model.yaml: llama-demo and qwen-demo behind one URL."""
    args = manifest_args("multi-model.yaml", serve_cluster.demo_root)
    return serve_cluster.deploy("multi", build_app(args))


@pytest.fixture(scope="session")
def multi_model_dirs(multi_model_app: str, serve_cluster: ServeCluster) -> dict[str, Path]:
    """The directories the replicas wrote their demo models into."""
    return {name: serve_cluster.demo_root / name for name in ("llama-demo", "qwen-demo")}
