"""Sharded execution: the model in Ray actors, pipeline stages of tensor-parallel shards, placed
by a placement group.

Stage s's shard r uses bundle `s * tensor_parallel_size + r` of a placement group. Inside a Ray
Serve replica reserved with `placement_group_bundles` (bundle 0 holds the replica and the first
shard), that is the replica's own group, so Serve starts and stops whole groups. Elsewhere the
executor reserves a group of one bundle per shard with the configured strategy and releases it on
`close()`.

The engine (scheduler) stays in the caller's process. A batch goes to every shard at once (a
Ray object of the batch); the shards are one torch.distributed world, and each stage's shards
receive the previous stage's hidden state from it directly (`shard_worker`), so only the
batch goes out and only the last stage's sampled tokens come back through Ray. (A hidden state
sent over gloo took a half to a fifth of the time it took as a Ray object passed from one stage's
call to the next's, one decode row to a 2,048-token chunk, between two nodes:
`benchmarks/stage_transport.py`.) Within a stage the shards run in lockstep (collectives in the
stage's own group). Submitting waits for nothing: each actor runs its calls in submission order,
so with batches in flight stage k works on batch i while stage k+1 works on batch i - 1. Up to
`pipeline_parallel_size` batches are in flight; `execute` hands back the oldest when the pipeline
is full or no new batch came.

A shard that dies fails its batch at once: the executor waits on every shard's call of the batch,
first failure first (not on the last stage's, which would wait behind a receive or a
collective). Shards left waiting on the dead one (gloo fails them when its connection closes;
NCCL would wait out the collective timeout) are stopped by `close()`, which kills every shard.
`check_health` pings every shard on a thread of its own, so a long step or load never makes a
live shard look dead.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from transformers import AutoConfig, GenerationConfig, PretrainedConfig

from engine.config import EngineConfig
from engine.errors import EngineDeadError, EngineError
from engine.outputs import ShardInfo
from engine.parallel.placement import check_shardable, shard_bundles
from engine.parallel.shard_worker import ShardLoadReport, ShardWorker, StageWork
from engine.parallel.stages import PipelineStage, pipeline_stages
from engine.step_data import SampledTokens, SchedulerOutput

__all__ = ["ShardedExecutor", "spawn_shard"]

logger = logging.getLogger(__name__)

# How long to wait for the cluster to place the shards before giving up.
PLACEMENT_TIMEOUT_S = 300.0
# How long every shard may take to answer a health ping (it answers even mid-step: see below).
HEALTH_PING_TIMEOUT_S = 20.0
# The shard actors' concurrency group for `ping`, with a thread of its own.
_HEALTH_GROUP = "health"


class _ShardActor(ShardWorker):
    """A ShardWorker that knows its Ray node (the actor class is made with `ray.remote` below)."""

    def __init__(self, config: EngineConfig, stage: PipelineStage, rank: int) -> None:
        super().__init__(config, stage, rank, node_id=ray.get_runtime_context().get_node_id())

    def node(self) -> tuple[str, str]:
        """(Ray node id, node IP address) of this shard."""
        return self.node_id, ray.util.get_node_ip_address()

    def open_node_store(self) -> int:
        return self.open_store(ray.util.get_node_ip_address())

    # A shard actor runs one method at a time, so a ping in the default group would queue behind a
    # step (or `load`) that runs longer than HEALTH_PING_TIMEOUT_S and a live replica would be
    # reported dead. `ping` therefore runs in a concurrency group of its own (one thread), and it
    # touches no shard state, so it is safe beside a step. Every other method stays in the default
    # group, of one thread, so steps, loads and allocations remain serialized in submission order.
    @ray.method(concurrency_group=_HEALTH_GROUP)
    def ping(self) -> None:
        """Answers while the actor's process is alive and serving calls, even in the middle of a step."""


# `concurrency_groups` can only be given to `ray.remote`, not to `.options()`.
_RemoteShard = ray.remote(concurrency_groups={_HEALTH_GROUP: 1})(_ShardActor)


def spawn_shard(config: EngineConfig, group: PlacementGroup, stage: PipelineStage, rank: int) -> Any:
    """Start rank `rank` of `stage` in its bundle of `group`: its CPUs, and on CUDA one GPU."""
    return _RemoteShard.options(
        num_cpus=config.cpus_per_shard,
        num_gpus=1 if config.device.startswith("cuda") else 0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=stage.index * config.tensor_parallel_size + rank
        ),
    ).remote(config, stage, rank)


@dataclass(frozen=True)
class _InFlight:
    """A batch submitted to the shards: every shard's call, and the one that returns its tokens."""

    batch: SchedulerOutput
    calls: list[Any]
    tokens: Any


class ShardedExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config: PretrainedConfig = AutoConfig.from_pretrained(config.model)
        check_shardable(self.model_config, config.tensor_parallel_size)
        self.stages = pipeline_stages(self.model_config, config.pipeline_parallel_size)
        self.generation_config = _generation_config(config.model)
        self.max_in_flight = config.pipeline_parallel_size
        if not ray.is_initialized():
            ray.init()
        self._owned_group: PlacementGroup | None = None
        # The shards in bundle order: by stage, then tensor-parallel rank.
        self._workers: list[Any] = []
        self._in_flight: deque[_InFlight] = deque()
        self._batch_indices = itertools.count()
        try:
            group = self._placement_group()
            tp = config.tensor_parallel_size
            self._workers = [spawn_shard(config, group, stage, rank) for stage in self.stages for rank in range(tp)]
            nodes: list[tuple[str, str]] = self._on_every_shard("node")
            reports: list[ShardLoadReport] = self._on_every_shard_each("load", self._load_args(nodes))
            # Every shard holds the same blocks (of its own heads and layers): the smallest pool wins.
            self.num_kv_blocks = min(report.planned_kv_blocks for report in reports)
            self.max_model_len = reports[0].max_model_len
            self._on_every_shard("allocate_kv_cache", self.num_kv_blocks)
            self._shards: list[ShardInfo] = self._on_every_shard("info")
        except BaseException:
            self.close()
            raise
        logger.info(
            "sharded %s: %s",
            config.model,
            ", ".join(
                f"stage {shard.stage} shard {shard.rank} on node {shard.node_id} ({shard.device}, "
                f"{shard.weight_bytes / 2**20:.1f} MiB)"
                for shard in self._shards
            ),
        )
        self._warn_of_stages_across_nodes()

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def execute(self, batch: SchedulerOutput) -> tuple[SchedulerOutput, SampledTokens] | None:
        """Submit `batch` (unless empty); return the oldest batch in flight and its sampled tokens
        once the pipeline is full or no new batch came, else None (the batch is on its way)."""
        if not batch.is_empty:
            self._submit(batch)
            if len(self._in_flight) < self.max_in_flight:
                return None
        if not self._in_flight:
            raise EngineError("execute got an empty batch with none in flight")
        oldest = self._in_flight.popleft()
        self._wait_for_every_shard(oldest.calls, "execute")
        sampled: SampledTokens = ray.get(oldest.tokens)
        return oldest.batch, sampled

    def shards(self) -> list[ShardInfo]:
        return list(self._shards)

    def stage_work(self) -> list[list[StageWork]]:
        """Per shard (stage by stage, then by rank), the times of the batches it ran most recently."""
        return self._on_every_shard("recent_work")

    def check_health(self) -> None:
        """Raise EngineDeadError unless every shard answers within HEALTH_PING_TIMEOUT_S."""
        try:
            ray.get([worker.ping.remote() for worker in self._workers], timeout=HEALTH_PING_TIMEOUT_S)
        except (RayError, GetTimeoutError) as error:
            raise EngineDeadError(f"a shard of the model is not answering: {type(error).__name__}") from error

    def close(self) -> None:
        """Stop the shards (even one blocked in a collective) and release an owned placement group."""
        self._in_flight.clear()
        workers, self._workers = self._workers, []
        for worker in workers:
            ray.kill(worker, no_restart=True)
        group, self._owned_group = self._owned_group, None
        if group is not None:
            remove_placement_group(group)

    def _submit(self, batch: SchedulerOutput) -> None:
        """Start `batch` on every shard; the last stage's rank 0 returns its tokens."""
        batch_index = next(self._batch_indices)
        batch_ref = ray.put(batch)
        calls = [worker.execute.remote(batch_ref, batch_index) for worker in self._workers]
        last_stage_rank_0 = (self.config.pipeline_parallel_size - 1) * self.config.tensor_parallel_size
        self._in_flight.append(_InFlight(batch, calls, tokens=calls[last_stage_rank_0]))

    def _warn_of_stages_across_nodes(self) -> None:
        """Say so when a stage's tensor-parallel shards landed on several nodes: Ray places the group
        as a whole, so nothing keeps a stage on one node but the strategy and the node sizes."""
        for stage in self.stages:
            nodes = {shard.node_id for shard in self._shards if shard.stage == stage.index}
            if len(nodes) > 1:
                logger.warning(
                    "the %d tensor-parallel shards of stage %d are on %d nodes: their all-reduces cross the "
                    "network; PACK with tensor_parallel_size at most a node's GPUs keeps a stage on one node",
                    self.config.tensor_parallel_size,
                    stage.index,
                    len(nodes),
                )

    def _load_args(self, nodes: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
        """Each shard's `load` arguments: world rank 0's store (when there are several shards), and
        how many shards share its node."""
        port = ray.get(self._workers[0].open_node_store.remote()) if len(self._workers) > 1 else 0
        return [(nodes[0][1], port, sum(other == node for other in nodes)) for node in nodes]

    def _placement_group(self) -> PlacementGroup:
        """The replica's group when running in one, else a new group of one bundle per shard."""
        current = get_current_placement_group()
        size = self.config.num_shards
        if current is not None:
            if len(current.bundle_specs) < size:
                raise EngineError(
                    f"tensor_parallel_size={self.config.tensor_parallel_size} x pipeline_parallel_size="
                    f"{self.config.pipeline_parallel_size} needs a bundle per shard, but this process's placement "
                    f"group has {len(current.bundle_specs)}"
                )
            return current
        group = placement_group(shard_bundles(self.config), strategy=self.config.placement_strategy)
        self._owned_group = group
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError as error:
            raise EngineError(
                f"could not place {size} shards of {shard_bundles(self.config)[0]} with strategy "
                f"{self.config.placement_strategy} within {PLACEMENT_TIMEOUT_S:.0f}s; the cluster has "
                f"{ray.cluster_resources()}"
            ) from error
        return group

    def _on_every_shard(self, method: str, *args: object) -> list[Any]:
        """Call `method` on every shard; results in bundle order. The first shard to fail raises at once."""
        return self._on_every_shard_each(method, [args] * len(self._workers))

    def _on_every_shard_each(self, method: str, args_by_shard: list[tuple[Any, ...]]) -> list[Any]:
        """Call `method` on every shard with its own arguments; results in bundle order."""
        refs = [getattr(worker, method).remote(*args) for worker, args in zip(self._workers, args_by_shard)]
        self._wait_for_every_shard(refs, method)
        return ray.get(refs)

    def _wait_for_every_shard(self, refs: list[Any], method: str) -> None:
        """Wait until every shard's call in `refs` (bundle order) is done; the first to fail raises."""
        shard_of = {ref: index for index, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except RayTaskError as error:
                if isinstance(error.cause, ValueError):  # the config does not suit the model
                    raise error.cause from None
                raise EngineDeadError(f"{self._shard_name(shard_of[ready[0]])} failed in {method}: {error}") from error
            except RayError as error:
                raise EngineDeadError(f"{self._shard_name(shard_of[ready[0]])} failed in {method}: {error}") from error

    def _shard_name(self, index: int) -> str:
        stage, rank = divmod(index, self.config.tensor_parallel_size)
        if self.config.pipeline_parallel_size == 1:
            return f"tensor-parallel shard {rank}"
        return f"pipeline stage {stage} shard {rank}"


def _generation_config(model: str) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:  # a model without generation_config.json
        return None
