"""One shard: the process (a Ray actor) that holds a tensor-parallel slice of a pipeline stage.

Every shard of the model is one rank of a torch.distributed world (gloo on CPU, NCCL on CUDA):
stage s's shard r is rank `s * tensor_parallel_size + r`. The shards of one stage run the same
forward on the same batch; the collectives inside the sharded layers keep them in lockstep,
within the stage's own group. Each shard of a stage but the last ends its forward with the whole
hidden state (1, T, H) and sends it to the shard of the same tensor-parallel rank on the next
stage, which receives it before its own forward; nothing but that tensor passes between stages
(the models split here carry no separate residual). The last stage's rank 0 samples and returns
the tokens (only token ids leave the last stage, never logits).
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
    """When a shard ran the batch the executor numbered `batch_index` (time.time(), seconds): from
    after it received the previous stage's hidden state to before it sent its own. On CUDA these
    are the host's times, at which the kernels were queued, not necessarily run."""

    batch_index: int
    start: float
    end: float


class ShardWorker:
    """Construct in the shard's process; with more than one shard call `open_store` on world rank 0
    (stage 0's rank 0), then `load` on every shard at once (they all meet at that store), then
    `allocate_kv_cache`."""

    def __init__(self, config: EngineConfig, stage: PipelineStage, rank: int, node_id: str) -> None:
        self.config = config
        self.stage = stage
        self.group = ShardGroup(rank=rank, world_size=config.tensor_parallel_size)
        # This shard's rank in the model's world (see the module's docstring).
        self.world_rank = stage.index * config.tensor_parallel_size + rank
        self.node_id = node_id
        self.runner: ModelRunner | None = None
        self.sampler = Sampler()
        self.store: dist.TCPStore | None = None
        self.work: deque[StageWork] = deque(maxlen=_WORK_HISTORY)
        if config.device == "cpu":
            torch.set_num_threads(max(1, int(config.cpus_per_shard)))

    def open_store(self, host: str) -> int:
        """World rank 0: serve the shards' rendezvous store on `host` (this node's address); returns
        its port. The store binds a port the system picks, so no two models can race for one."""
        self.store = dist.TCPStore(
            host, 0, self.config.num_shards, is_master=True, timeout=_COLLECTIVE_TIMEOUT, wait_for_workers=False
        )
        return self.store.port

    def load(self, host: str, port: int, shards_on_node: int) -> ShardLoadReport:
        """Join the other shards at world rank 0's store (when there are others) and load this
        shard's part. `shards_on_node` shards share this node's memory, so on CPU each plans its KV
        cache from that share."""
        if self.config.num_shards > 1:
            self._join_world(host, port)
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

    def execute(self, batch: SchedulerOutput, batch_index: int) -> SampledTokens | None:
        """Run this shard's part of `batch`: receive the previous stage's hidden state (but on the
        first stage), run the stage's layers, send the hidden state on (but on the last stage).
        The last stage's rank 0 returns the sampled tokens; every other shard returns None."""
        runner = self._runner()
        hidden = None if self.stage.is_first else self._receive_hidden(batch, runner)
        # The record starts after the receive and ends before the send: time spent waiting for a
        # neighbour is the pipeline's bubble, not work.
        start = time.time()
        result: SampledTokens | None = None
        if self.stage.is_last and self.group.rank == 0:
            result = sample_batch(runner, self.sampler, batch, hidden)
        elif self.stage.is_last:
            runner.forward(batch, hidden)
        else:
            output = runner.forward(batch, hidden)  # (1, T, H), whole on every rank of the stage
        self.work.append(StageWork(batch_index, start, time.time()))
        if not self.stage.is_last:
            dist.send(output.contiguous(), dst=self.world_rank + self.config.tensor_parallel_size)
        return result

    def recent_work(self) -> list[StageWork]:
        """The times of the most recent batches this shard ran, oldest first."""
        return list(self.work)

    def info(self) -> ShardInfo:
        runner = self._runner()
        return ShardInfo(
            self.group.rank, self.node_id, str(runner.device), runner.weight_bytes, os.getpid(), stage=self.stage.index
        )

    def _join_world(self, host: str, port: int) -> None:
        """Join the model's world; with pipeline stages of several shards each, make every stage's
        group (each rank takes part in making all of them, in the same order) and keep its own."""
        if self.store is None:
            self.store = dist.TCPStore(host, port, self.config.num_shards, is_master=False, timeout=_COLLECTIVE_TIMEOUT)
        dist.init_process_group(
            backend="nccl" if self.config.device.startswith("cuda") else "gloo",
            store=self.store,
            rank=self.world_rank,
            world_size=self.config.num_shards,
            timeout=_COLLECTIVE_TIMEOUT,
        )
        tp = self.config.tensor_parallel_size
        if self.config.pipeline_parallel_size == 1 or tp == 1:
            return  # the world is the one stage's group, or no stage has collectives
        for stage in range(self.config.pipeline_parallel_size):
            group = dist.new_group(ranks=list(range(stage * tp, (stage + 1) * tp)), timeout=_COLLECTIVE_TIMEOUT)
            if stage == self.stage.index:
                self.group = ShardGroup(rank=self.group.rank, world_size=tp, process_group=group)

    def _receive_hidden(self, batch: SchedulerOutput, runner: ModelRunner) -> torch.Tensor:
        """The previous stage's hidden state for `batch`, (1, T, H) with T the batch's tokens,
        from the shard of this rank on that stage."""
        num_tokens = sum(len(chunk.token_ids) for chunk in batch.chunks)
        hidden_size = runner.model.config.get_text_config().hidden_size
        hidden = torch.empty((1, num_tokens, hidden_size), dtype=runner.dtype, device=runner.device)
        dist.recv(hidden, src=self.world_rank - self.config.tensor_parallel_size)
        return hidden

    def _runner(self) -> ModelRunner:
        if self.runner is None:
            raise RuntimeError("shard is not loaded: call load() first")
        return self.runner
