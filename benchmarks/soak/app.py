"""The app the soak suite serves, and where to find its processes.

Two models behind two Router replicas, auth on with a Redis tenants store:

    soak-demo   a demo Llama in two replicas with a bounded queue, so that overload is answered with
                429s rather than an unbounded wait (priced, so that spend can be checked)
    soak-tp     the same model in one replica of two tensor-parallel shards

One tenant, `soak`, may use both without limits; its key is written to the store after deploy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ray import serve

from benchmarks.soak.processes import pids_titled
from deployments.tenants.key_admin import create_key
from deployments.tenants.store import open_store

__all__ = [
    "MAX_NUM_SEQS",
    "MODEL",
    "NUM_KV_BLOCKS",
    "NUM_TP_KV_BLOCKS",
    "REPLICAS",
    "ROUTERS",
    "TENANT",
    "TP_MODEL",
    "new_api_key",
    "replaced",
    "replica_pids",
    "router_pids",
    "shard_pids",
    "soak_app_args",
]

MODEL = "soak-demo"
TP_MODEL = "soak-tp"
TENANT = "soak"
NUM_KV_BLOCKS = 256
NUM_TP_KV_BLOCKS = 64
REPLICAS = 2
ROUTERS = 2
MAX_NUM_SEQS = 8
# USD per million tokens: what the tenant's spend is checked against.
PRICING = {"input_per_million": 1.0, "output_per_million": 2.0}


def soak_app_args(demo_dir: Path, store_url: str) -> dict[str, Any]:
    engine = {"num_kv_blocks": NUM_KV_BLOCKS, "max_num_seqs": MAX_NUM_SEQS, "max_model_len": 1024}
    deployment = {
        "num_replicas": REPLICAS,
        "max_ongoing_requests": MAX_NUM_SEQS * 2,
        "max_queued_requests": 16,
        "ray_actor_options": {"num_cpus": 1},
    }
    tp_engine = {**engine, "tensor_parallel_size": 2, "cpus_per_shard": 0.5, "num_kv_blocks": NUM_TP_KV_BLOCKS}
    # A killed shard fails the health check within a second; the group is replaced, not drained.
    tp_deployment = {"ray_actor_options": {"num_cpus": 0.5}, "health_check_period_s": 1,
                     "graceful_shutdown_timeout_s": 1}  # fmt: skip
    source = {"demo": "llama", "demo_dir": str(demo_dir)}
    return {
        "models": [
            {"name": MODEL, "source": source, "engine": engine, "deployment": deployment, "pricing": PRICING},
            {"name": TP_MODEL, "source": source, "engine": tp_engine, "deployment": tp_deployment},
        ],
        "router": {"num_replicas": ROUTERS, "num_cpus": 0.25},
        "auth": {"enabled": True, "store": store_url},
        "tenants": [{"name": TENANT}],
    }


def new_api_key(store_url: str, tenant: str = TENANT) -> str:
    """A new key of `tenant` (the soak tenant unless told), written to the store at `store_url`."""

    async def create() -> str:
        store = open_store(store_url)
        try:
            key, _ = await create_key(
                store, tenant, known_tenants=None, description="soak", expires_in_s=None, now=time.time()
            )
            return key.key
        finally:
            await store.close()

    return asyncio.run(create())


def replica_pids(app: str, deployment: str = f"LLMServer:{MODEL}") -> list[int]:
    """Process ids of a deployment's replicas on this machine (Ray's state API would need the
    dashboard)."""
    return pids_titled(f"ServeReplica:{app}:{deployment}")


def router_pids(app: str) -> list[int]:
    return replica_pids(app, "Router")


def shard_pids(app: str) -> list[int]:
    """Process ids of the tensor-parallel model's shards, as its replica reports them."""
    handle = serve.get_deployment_handle(f"LLMServer:{TP_MODEL}", app_name=app)
    return [shard.pid for shard in handle.shards.remote().result(timeout_s=30)]


def replaced(app: str, deployment: str, replicas: int, gone_pid: int) -> bool:
    """Whether Serve runs `replicas` healthy replicas of `deployment` again, none of them the process
    `gone_pid` (a killed replica, or the replica whose shard was killed)."""
    status = serve.status().applications[app].deployments[deployment]
    running = status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == replicas
    pids = replica_pids(app, deployment)
    return running and len(pids) == replicas and gone_pid not in pids
