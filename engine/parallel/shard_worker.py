"""One tensor-parallel shard: the process (a Ray actor) that holds a slice of the model.

Every shard runs the same forward on the same batch; the collectives inside the sharded layers
keep them in lockstep. Rank 0 also samples, so only token ids leave the shards, never logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.model.model_runner import ModelRunner
from engine.model.sampler import Sampler
from engine.outputs import ShardInfo
from engine.parallel.in_process import sample_batch
from engine.parallel.tp_layers import ShardGroup
from engine.step_data import SampledTokens, SchedulerOutput

__all__ = ["ShardLoadReport", "ShardWorker"]

# How long a shard waits in a collective for the others. A dead peer is noticed sooner (the
# executor sees its actor die); this bounds a peer that hangs.
_COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class ShardLoadReport:
    """What a shard learned loading its slice: the pool it could fit, and the context limit."""

    planned_kv_blocks: int
    max_model_len: int


class ShardWorker:
    """Construct in the shard's process, call `open_store` on rank 0, then `load` on every shard at
    once (they meet at rank 0's store), then `allocate_kv_cache`."""

    def __init__(self, config: EngineConfig, rank: int, node_id: str) -> None:
        self.config = config
        self.group = ShardGroup(rank=rank, world_size=config.tensor_parallel_size)
        self.node_id = node_id
        self.runner: ModelRunner | None = None
        self.sampler = Sampler()
        self.store: dist.TCPStore | None = None
        if config.device == "cpu":
            torch.set_num_threads(max(1, int(config.cpus_per_shard)))

    def open_store(self, host: str) -> int:
        """Rank 0: serve the shards' rendezvous store on `host` (this node's address); returns its
        port. The store binds a port the system picks, so no two groups can race for one."""
        self.store = dist.TCPStore(
            host, 0, self.group.world_size, is_master=True, timeout=_COLLECTIVE_TIMEOUT, wait_for_workers=False
        )
        return self.store.port

    def load(self, host: str, port: int, shards_on_node: int) -> ShardLoadReport:
        """Join the other shards at rank 0's store and load this shard's slice. `shards_on_node`
        shards share this node's memory, so on CPU each plans its KV cache from that share."""
        if self.store is None:
            self.store = dist.TCPStore(host, port, self.group.world_size, is_master=False, timeout=_COLLECTIVE_TIMEOUT)
        dist.init_process_group(
            backend="nccl" if self.config.device.startswith("cuda") else "gloo",
            store=self.store,
            rank=self.group.rank,
            world_size=self.group.world_size,
            timeout=_COLLECTIVE_TIMEOUT,
        )
        on_gpu = self.config.device.startswith("cuda")  # each shard has a GPU of its own
        self.runner = ModelRunner(self.config, self.group, memory_share=1.0 if on_gpu else 1.0 / shards_on_node)
        return ShardLoadReport(
            planned_kv_blocks=self.runner.planned_kv_blocks,
            max_model_len=self.runner.max_model_len,
        )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._runner().allocate_kv_cache(num_blocks)

    def execute(self, batch: SchedulerOutput) -> SampledTokens | None:
        """Rank 0: the sampled tokens. Other ranks: None (their forward fed rank 0's collectives)."""
        runner = self._runner()
        if self.group.rank == 0:
            return sample_batch(runner, self.sampler, batch)
        runner.forward(batch)
        return None

    def info(self) -> ShardInfo:
        runner = self._runner()
        return ShardInfo(self.group.rank, self.node_id, str(runner.device), runner.weight_bytes, os.getpid())

    def _runner(self) -> ModelRunner:
        if self.runner is None:
            raise RuntimeError("shard is not loaded: call load() first")
        return self.runner
