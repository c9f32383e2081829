"""Elasticity figures for manifests/scale-to-zero.yaml, and prefix affinity's effect on cache hits.

Part 1 runs the manifest's app as written (idle timeout 30 s) on a local Ray instance, and per
round measures:

- cold start: a streaming request to the model at zero replicas -> its first token (the replica
  is placed, loads the demo model's weights and generates; keep-alive comments meanwhile);
- burst -> second replica: 24 requests of 400 tokens sent at once -> two replicas RUNNING;
- idle -> zero: the last burst request finished -> no replica left.

Part 2 runs the same model with two fixed replicas, once with prefix affinity and once with
queue-depth routing alone, on a shared-prefix workload (8 long system prompts, each request one
of them plus its own question; 8 in flight), and reads the prefix-cache hit rate from the
responses' `usage.prompt_tokens_details.cached_tokens`.

    .venv/bin/python -m benchmarks.scale_to_zero [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import random
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve
from ray.serve.schema import ReplicaState

from deployments.app import build_app

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "LLMServer:demo"
DEADLINE_S = 300.0
NUM_PREFIXES = 8
NUM_PREFIX_REQUESTS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    manifest = yaml.safe_load((REPO_ROOT / "manifests" / "scale-to-zero.yaml").read_text())
    app_args = manifest["applications"][0]["args"]
    ray.init(num_cpus=2, include_dashboard=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        elasticity = [_elasticity_round(url, app_args) for _ in range(args.rounds)]
        hit_rates = {affinity: _prefix_hit_rate(url, app_args, affinity) for affinity in (True, False)}
    finally:
        serve.shutdown()
        ray.shutdown()
    _print(elasticity, hit_rates, app_args)


def _elasticity_round(url: str, app_args: dict[str, Any]) -> dict[str, float]:
    serve.run(build_app(app_args), name="scale", route_prefix="/scale")
    base = f"{url}/scale"
    _wait(lambda: _answers(f"{base}/health"))
    assert _running("scale") == 0
    cold_start_s = _first_token_seconds(base)
    burst_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=24) as pool:
        burst = [pool.submit(_complete, base, "burst", 400) for _ in range(24)]
        second_replica_s = _wait(lambda: _running("scale") >= 2, since=burst_started)
        statuses = [future.result().status_code for future in burst]
    if statuses != [200] * 24:
        raise RuntimeError(f"burst requests failed: {statuses}")
    idle_to_zero_s = _wait(lambda: _running("scale") == 0)
    serve.delete("scale")
    return {"cold_start_s": cold_start_s, "second_replica_s": second_replica_s, "idle_to_zero_s": idle_to_zero_s}


def _prefix_hit_rate(url: str, app_args: dict[str, Any], affinity: bool) -> float:
    args = copy.deepcopy(app_args)
    deployment = args["models"][0]["deployment"]
    deployment.pop("autoscaling")
    deployment["num_replicas"] = 2
    deployment["routing"]["prefix_affinity"] = affinity
    name = f"prefix-{'affinity' if affinity else 'queue'}"
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    base = f"{url}/{name}"
    _wait(lambda: _running(name) == 2 and _answers(f"{base}/health"))
    rng = random.Random(0)
    words = ("alpha", "beta", "gamma", "delta")
    prefixes = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(NUM_PREFIXES)]
    prompts = [f"{rng.choice(prefixes)} Question {i}: {rng.random()}" for i in range(NUM_PREFIX_REQUESTS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        usages = [response.json()["usage"] for response in pool.map(lambda p: _complete(base, p, 16), prompts)]
    serve.delete(name)
    cached = sum(usage["prompt_tokens_details"]["cached_tokens"] for usage in usages)
    return cached / sum(usage["prompt_tokens"] for usage in usages)


def _first_token_seconds(base: str) -> float:
    body = {"model": "demo", "prompt": "cold", "max_tokens": 8, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=DEADLINE_S) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                return time.monotonic() - started
    raise RuntimeError("the cold request produced no token")


def _complete(base: str, prompt: str, max_tokens: int) -> httpx.Response:
    body = {"model": "demo", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    return httpx.post(f"{base}/v1/completions", json=body, timeout=DEADLINE_S)


def _running(app: str) -> int:
    deployment = serve.status().applications[app].deployments.get(DEPLOYMENT)
    return 0 if deployment is None else deployment.replica_states.get(ReplicaState.RUNNING, 0)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition: Any, since: float | None = None) -> float:
    """Seconds from `since` (default: now) until `condition()` holds."""
    started = time.monotonic() if since is None else since
    while not condition():
        if time.monotonic() - started > DEADLINE_S:
            raise TimeoutError("the deployment did not get there in time")
        time.sleep(0.1)
    return time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _print(rounds: list[dict[str, float]], hit_rates: dict[bool, float], app_args: dict[str, Any]) -> None:
    autoscaling = app_args["models"][0]["deployment"]["autoscaling"]
    print(
        f"\nmanifests/scale-to-zero.yaml: idle_timeout_s {autoscaling['idle_timeout_s']}, "
        f"upscale_delay_s {autoscaling['upscale_delay_s']}, downscale_delay_s {autoscaling['downscale_delay_s']}; "
        f"{len(rounds)} rounds"
    )
    print(f"{'figure':<42}{'median s':>10}   runs")
    for key, label in (
        ("cold_start_s", "cold start: request -> first token"),
        ("second_replica_s", "burst of 24 -> second replica running"),
        ("idle_to_zero_s", "last request done -> zero replicas"),
    ):
        values = [round_[key] for round_ in rounds]
        print(f"{label:<42}{statistics.median(values):>10.1f}   {' '.join(f'{v:.1f}' for v in values)}")
    print(f"\nprefix-cache hit rate, 2 replicas, {NUM_PREFIX_REQUESTS} requests over {NUM_PREFIXES} shared prefixes:")
    print(f"  prefix affinity + queue depth   {hit_rates[True]:.1%}")
    print(f"  queue depth alone               {hit_rates[False]:.1%}")


if __name__ == "__main__":
    main()
