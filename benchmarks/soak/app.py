"""The app the soak suite serves: one demo model in two replicas with a bounded queue, so that
overload is answered with 429s rather than an unbounded wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
from ray import serve

__all__ = ["MAX_NUM_SEQS", "MODEL", "NUM_KV_BLOCKS", "REPLICAS", "replaced", "replica_pids", "soak_app_args"]

MODEL = "soak-demo"
NUM_KV_BLOCKS = 256
REPLICAS = 2
MAX_NUM_SEQS = 8


def soak_app_args(demo_dir: Path) -> dict[str, Any]:
    engine = {"num_kv_blocks": NUM_KV_BLOCKS, "max_num_seqs": MAX_NUM_SEQS, "max_model_len": 1024}
    deployment = {
        "num_replicas": REPLICAS,
        "max_ongoing_requests": MAX_NUM_SEQS * 2,
        "max_queued_requests": 16,
        "ray_actor_options": {"num_cpus": 1},
    }
    source = {"demo": "llama", "demo_dir": str(demo_dir)}
    return {
        "models": [{"name": MODEL, "source": source, "engine": engine, "deployment": deployment}],
        "router": {"num_cpus": 0.5},
    }


def replica_pids(app: str) -> list[int]:
    """Process ids of the model's replicas on this machine (for SIGKILL), by their process titles
    (Ray's state API would need the dashboard)."""
    title = f"ServeReplica:{app}:LLMServer:{MODEL}"
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        # Ray titles an actor's process `ray::<class>`, `ray::<class>.<method>` while it runs one.
        words = process.info["cmdline"] or []
        if any(word.removeprefix("ray::").split(".")[0] == title for word in words):
            pids.append(process.pid)
    return pids


def replaced(app: str, killed_pid: int) -> bool:
    """Whether Serve runs every replica of the model again, healthy, none of them `killed_pid`."""
    deployment = serve.status().applications[app].deployments[f"LLMServer:{MODEL}"]
    running = deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) == REPLICAS
    pids = replica_pids(app)
    return running and len(pids) == REPLICAS and killed_pid not in pids
