"""manifests/scale-to-zero.yaml end to end: zero replicas at rest, a held first request, a burst
that brings a second replica, idleness that returns to zero, and 429s (never 5xx) under overload."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from ray import serve
from ray.serve.schema import ReplicaState

from deployments.app import build_app
from tests.serve.conftest import ServeCluster, manifest_args

APP = "scale"
DEPLOYMENT = "LLMServer:demo"
SCALE_TIMEOUT_S = 120.0


def running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
    return deployment.replica_states.get(ReplicaState.RUNNING, 0)


def wait_for_replicas(count: int, timeout_s: float = SCALE_TIMEOUT_S) -> float:
    """Seconds until exactly `count` replicas run."""
    started = time.monotonic()
    while running_replicas() != count:
        assert time.monotonic() - started < timeout_s, f"never reached {count} running replicas"
        time.sleep(0.25)
    return time.monotonic() - started


def complete(url: str, max_tokens: int, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"model": "demo", "prompt": "scale me", "max_tokens": max_tokens, "ignore_eos": True}
    return httpx.post(f"{url}/v1/completions", json=body | {"stream": stream}, timeout=SCALE_TIMEOUT_S)


def test_scale_to_zero_holds_the_first_request_scales_with_a_burst_and_returns_to_zero(
    serve_cluster: ServeCluster,
) -> None:
    args = manifest_args("scale-to-zero.yaml", serve_cluster.demo_root)
    autoscaling = args["models"][0]["deployment"]["autoscaling"]
    autoscaling.update(idle_timeout_s=3, downscale_delay_s=2)  # the manifest's timings, shortened
    args["router"]["keepalive_interval_s"] = 0.5
    url = serve_cluster.deploy(APP, build_app(args))

    # At rest: no replica, so no weights loaded anywhere; the API says so.
    assert running_replicas() == 0
    (listed,) = httpx.get(f"{url}/v1/models").json()["data"]
    assert listed["status"]["state"] == "scaled_to_zero"

    # The first request is held while a replica starts, kept alive, then served.
    first = complete(url, 8, stream=True)
    assert first.status_code == 200
    assert first.text.startswith(": ")  # keep-alive comments while the replica started
    assert first.text.endswith("data: [DONE]\n\n") and '"error"' not in first.text
    assert running_replicas() == 1

    # Two dozen clients sending long requests back to back bring the second replica (however fast
    # the engine drains them, the load lasts until it runs); every request completes.
    second_replica_runs = threading.Event()

    def client() -> list[int]:
        statuses = [complete(url, 400).status_code]
        while not second_replica_runs.is_set():
            statuses.append(complete(url, 400).status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=24) as pool:
        burst = [pool.submit(client) for _ in range(24)]
        try:
            wait_for_replicas(2)
        finally:
            second_replica_runs.set()
        statuses = [status for future in burst for status in future.result()]
    assert len(statuses) >= 24 and set(statuses) == {200}

    # Idle: back to zero.
    wait_for_replicas(0)
    (listed,) = httpx.get(f"{url}/v1/models").json()["data"]
    assert listed["status"]["state"] == "scaled_to_zero"
    serve.delete(APP)


def test_overload_gets_429_with_retry_after_and_never_a_5xx(serve_cluster: ServeCluster) -> None:
    args = manifest_args("scale-to-zero.yaml", serve_cluster.demo_root)
    deployment = args["models"][0]["deployment"]
    deployment.update(max_ongoing_requests=2, max_queued_requests=2)
    deployment["autoscaling"].update(min_replicas=1, max_replicas=1)
    url = serve_cluster.deploy("overload", build_app(args))
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: complete(url, 64), range(16)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
    for response in responses:
        if response.status_code == 429:
            assert response.headers["Retry-After"] and response.json()["error"]["type"] == "rate_limit_error"
        else:
            assert response.json()["usage"]["completion_tokens"] == 64
    serve.delete("overload")
