"""One shard: the process (a Ray actor) that holds a tensor-parallel slice of a pipeline stage.

The shards of one stage run the same forward on the same batch; the collectives inside the
sharded layers keep them in lockstep, within the stage's own process group. The stage's rank 0
returns what the stage made: the hidden state for the next stage, or, on the last stage, the
sampled tokens (it alone samples, so only token ids leave the last stage, never logits).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.model.model_runner import ModelRunner
from engine.model.sampler import Sampler
from engine.outputs import ShardInfo
from engine.parallel.in_process import sample_batch
from engine.parallel.stages import PipelineStage
from engine.parallel.tp_layers import ShardGroup
from engine.step_data import SampledTokens, SchedulerOutput

__all__ = ["ShardLoadReport", "ShardWorker", "StageWork"]

# How long a shard waits in a collective for the others. A dead peer is noticed sooner (the
# executor sees its actor die); this bounds a peer that hangs.
_COLLECTIVE_TIMEOUT = timedelta(minutes=5)
# The most recent steps a shard remembers the times of (see `StageWork`).
_WORK_HISTORY = 1024


@dataclass(frozen=True)
class ShardLoadReport:
    """What a shard learned loading its slice: the pool it could fit, and the context limit."""

    planned_kv_blocks: int
    max_model_len: int


@dataclass(frozen=True)
class StageWork:
    """When a shard ran the batch the executor numbered `batch_index` (time.time(), seconds)."""

    batch_index: int
    start: float
    end: float


class ShardWorker:
    """Construct in the shard's process; with tensor_parallel_size > 1 call `open_store` on the
    stage's rank 0, then `load` on every shard at once (a stage's shards meet at its rank 0's
    store), then `allocate_kv_cache`."""

    def __init__(self, config: EngineConfig, stage: PipelineStage, rank: int, node_id: str) -> None:
        self.config = config
        self.stage = stage
        self.group = ShardGroup(rank=rank, world_size=config.tensor_parallel_size)
        self.node_id = node_id
        self.runner: ModelRunner | None = None
        self.sampler = Sampler()
        self.store: dist.TCPStore | None = None
        self.work: deque[StageWork] = deque(maxlen=_WORK_HISTORY)
        if config.device == "cpu":
            torch.set_num_threads(max(1, int(config.cpus_per_shard)))

    def open_store(self, host: str) -> int:
        """Rank 0 of a stage: serve its shards' rendezvous store on `host` (this node's address);
        returns its port. The store binds a port the system picks, so no two groups can race for one."""
        self.store = dist.TCPStore(
            host, 0, self.group.world_size, is_master=True, timeout=_COLLECTIVE_TIMEOUT, wait_for_workers=False
        )
        return self.store.port

    def load(self, host: str, port: int, shards_on_node: int) -> ShardLoadReport:
        """Join the stage's other shards at its rank 0's store (with tensor parallelism) and load
        this shard's part. `shards_on_node` shards share this node's memory, so on CPU each plans
        its KV cache from that share."""
        if self.group.world_size > 1:
            if self.store is None:
                self.store = dist.TCPStore(
                    host, port, self.group.world_size, is_master=False, timeout=_COLLECTIVE_TIMEOUT
                )
            dist.init_process_group(
                backend="nccl" if self.config.device.startswith("cuda") else "gloo",
                store=self.store,
                rank=self.group.rank,
                world_size=self.group.world_size,
                timeout=_COLLECTIVE_TIMEOUT,
            )
        on_gpu = self.config.device.startswith("cuda")  # each shard has a GPU of its own
        stage = self.stage if self.stage.num_stages > 1 else None
        self.runner = ModelRunner(
            self.config, self.group, memory_share=1.0 if on_gpu else 1.0 / shards_on_node, stage=stage
        )
        return ShardLoadReport(
            planned_kv_blocks=self.runner.planned_kv_blocks,
            max_model_len=self.runner.max_model_len,
        )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._runner().allocate_kv_cache(num_blocks)

    def execute(
        self, batch: SchedulerOutput, hidden: torch.Tensor | None, batch_index: int
    ) -> SampledTokens | torch.Tensor | None:
        """Run this shard's part of `batch`, from the previous stage's `hidden` state (None on the
        first stage). Rank 0 returns the sampled tokens on the last stage, else the hidden state
        (1, T, H), on the CPU, for the next stage; other ranks return None (their forward fed
        rank 0's collectives)."""
        runner = self._runner()
        start = time.time()
        if hidden is not None:
            hidden = hidden.to(runner.device)
        result: SampledTokens | torch.Tensor | None = None
        if self.stage.is_last and self.group.rank == 0:
            result = sample_batch(runner, self.sampler, batch, hidden)
        elif self.stage.is_last:
            runner.forward(batch, hidden)
        else:
            # Every rank of a stage but the last ends with the whole hidden state (the all-reduce
            # of the sharded layers); rank 0 hands it on.
            output = runner.forward(batch, hidden)
            result = output.cpu() if self.group.rank == 0 else None
        self.work.append(StageWork(batch_index, start, time.time()))
        return result

    def recent_work(self) -> list[StageWork]:
        """The times of the most recent batches this shard ran, oldest first."""
        return list(self.work)

    def info(self) -> ShardInfo:
        runner = self._runner()
        return ShardInfo(
            self.group.rank, self.node_id, str(runner.device), runner.weight_bytes, os.getpid(), stage=self.stage.index
        )

    def _runner(self) -> ModelRunner:
        if self.runner is None:
            raise RuntimeError("shard is not loaded: call load() first")
        return self.runner
