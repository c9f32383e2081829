"""What tenants cost the Router per request: latency with auth off, on with SQLite, on with Redis.

The Router's app (the same FastAPI app a Router replica serves) runs under uvicorn on 127.0.0.1 in
front of a model that answers at once, so the figures are the Router's own work: authenticate the
key, check the model, admit against the tenant's limits (one atomic store update), settle (a
second one). Requests are sent one after another; p50 / p99 over `--requests`, medians of
`--repeats` rounds, the three setups round-robin. Redis is a real `redis-server` on a free port,
its append-only file fsynced every second (Redis's default for it).

    .venv/bin/python -m benchmarks.auth_overhead [--requests 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
import uvicorn

from deployments.config import AppConfig
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.ingress.openai_app import ModelCard, build_openai_app
from deployments.tenants.gate import TenantAccess, TenantGate
from deployments.tenants.key_admin import create_key
from deployments.tenants.store import open_store
from tests.services import RedisServer, free_port

SETUPS = ("auth off", "sqlite", "redis")


class InstantModel:
    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk(0, "ok", [7], None, "length", 4, 1)


def _config(store_url: str | None) -> AppConfig:
    args: dict = {
        "models": [
            {
                "name": "m",
                "source": {"demo": "llama"},
                "engine": {"max_model_len": 512},
                "pricing": {"input_per_million": 0.1, "output_per_million": 0.4},
            }
        ],
    }
    if store_url is not None:
        args["auth"] = {"enabled": True, "store": store_url}
        args["tenants"] = [
            {
                "name": "t",
                "requests_per_minute": 10**6,
                "tokens_per_minute": 10**9,
                "max_concurrent_requests": 64,
                "budget": {"amount_usd": 10**6},
            }
        ]
    return AppConfig.model_validate(args)


class Server:
    def __init__(self, store_url: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        config = _config(store_url)
        access = TenantAccess.from_config(config)
        self.gate = None if access is None else TenantGate(access, open_store(access.auth.store))
        self.key = ""
        if self.gate is not None:
            created = self.loop.run_until_complete(
                create_key(
                    self.gate.store, "t", known_tenants=None, description="bench", expires_in_s=None, now=time.time()
                )
            )
            self.key = created[0].key
        app = build_openai_app({"m": InstantModel()}, [ModelCard("m", "demo", 0)], gate=self.gate)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.gate is not None:
            self.loop.run_until_complete(self.gate.close())
        self.loop.close()


def _latencies(server: Server, num_requests: int) -> list[float]:
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    body = {"model": "m", "prompt": "hello there", "max_tokens": 1}
    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as client:
        for index in range(num_requests + 20):
            started = time.perf_counter()
            response = client.post("/v1/completions", json=body)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            if index >= 20:  # the first requests warm connections and caches
                latencies.append(elapsed)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory) / "redis", appendfsync="everysec")
        redis.start()
        try:
            urls = {"auth off": None, "sqlite": f"sqlite:///{directory}/tenants.db", "redis": redis.url}
            rounds: dict[str, list[list[float]]] = {setup: [] for setup in SETUPS}
            for _ in range(args.repeats):
                for setup in SETUPS:
                    server = Server(urls[setup])
                    try:
                        rounds[setup].append(_latencies(server, args.requests))
                    finally:
                        server.close()
        finally:
            redis.stop()
    _print(rounds, args)


def _print(rounds: dict[str, list[list[float]]], args: argparse.Namespace) -> None:
    print(f"Router latency per request, {args.requests} sequential requests, medians of {args.repeats} rounds")
    print(f"{'setup':<10} {'p50 ms':>8} {'p99 ms':>8} {'added p50 ms':>13}")
    base = None
    for setup, latencies in rounds.items():
        p50 = statistics.median(statistics.median(run) for run in latencies) * 1000
        p99 = statistics.median(sorted(run)[int(0.99 * (len(run) - 1))] for run in latencies) * 1000
        base = p50 if base is None else base
        print(f"{setup:<10} {p50:>8.2f} {p99:>8.2f} {p50 - base:>13.2f}")


if __name__ == "__main__":
    main()
