"""What the engines still hold, read from the node's metrics export port (Prometheus text).

Every replica process exports its engine's gauges: the share of KV blocks in use, and requests
running and waiting. The engine reports after every step and every abort, so once traffic stops,
an engine that freed everything reads 0 within Ray's report interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics.definitions import KV_CACHE_USAGE, NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING

__all__ = ["EngineHoldings", "read_holdings", "wait_until_idle"]

# Ray exports an application's metrics with its own `ray_` prefix.
_KV_USAGE = f"ray_{KV_CACHE_USAGE.name}"
_REQUESTS = (f"ray_{NUM_REQUESTS_RUNNING.name}", f"ray_{NUM_REQUESTS_WAITING.name}")


@dataclass(frozen=True)
class EngineHoldings:
    # KV blocks in use, summed over the replicas (their usage share times their pool).
    kv_blocks: int
    # Requests running or waiting in the engines.
    requests: int
    # Replica processes whose KV gauge was read: none means nothing was seen, not that all is free.
    replicas_seen: int

    @property
    def is_idle(self) -> bool:
        return self.replicas_seen > 0 and self.kv_blocks == 0 and self.requests == 0


def read_holdings(metrics_url: str, model: str, blocks_per_replica: int) -> EngineHoldings:
    text = httpx.get(metrics_url, timeout=10).text
    kv_blocks, requests, replicas_seen = 0.0, 0.0, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == _KV_USAGE:
                kv_blocks += sample.value * blocks_per_replica
                replicas_seen += 1
            elif sample.name in _REQUESTS:
                requests += sample.value
    return EngineHoldings(round(kv_blocks), round(requests), replicas_seen)


def wait_until_idle(metrics_url: str, model: str, blocks_per_replica: int, deadline_s: float) -> EngineHoldings:
    """The engines' holdings once idle, or what they still hold at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        holdings = read_holdings(metrics_url, model, blocks_per_replica)
        if holdings.is_idle or time.monotonic() > deadline:
            return holdings
        time.sleep(0.5)
