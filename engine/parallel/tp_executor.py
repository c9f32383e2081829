"""Tensor-parallel execution: one Ray actor per shard, placed by a placement group.

The shards use bundle `rank` of a placement group. Inside a Ray Serve replica reserved with
`placement_group_bundles` (bundle 0 holds the replica and shard 0, bundle i shard i), that is the
replica's own group, so Serve starts and stops whole tensor-parallel groups. Elsewhere the
executor reserves a group of `tensor_parallel_size` bundles with the configured strategy and
releases it on `close()`.

The engine (scheduler) stays in the caller's process; each step's batch goes to every shard, the
shards run the forward in lockstep, and rank 0 returns the sampled tokens. A shard that dies
fails the step at once (the executor waits on all shards, first failure first, rather than on
rank 0, which would block in a collective); `check_health` pings every shard, on a thread of its
own, so a long step or load never makes a live shard look dead.
"""

from __future__ import annotations

import logging
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
from engine.parallel.shard_worker import ShardLoadReport, ShardWorker
from engine.step_data import SampledTokens, SchedulerOutput

__all__ = ["TensorParallelExecutor", "spawn_shard"]

logger = logging.getLogger(__name__)

# How long to wait for the cluster to place the shards before giving up.
PLACEMENT_TIMEOUT_S = 300.0
# How long every shard may take to answer a health ping (it answers even mid-step: see below).
HEALTH_PING_TIMEOUT_S = 20.0
# The shard actors' concurrency group for `ping`, with a thread of its own.
_HEALTH_GROUP = "health"


class _ShardActor(ShardWorker):
    """A ShardWorker that knows its Ray node (the actor class is made with `ray.remote` below)."""

    def __init__(self, config: EngineConfig, rank: int) -> None:
        super().__init__(config, rank, node_id=ray.get_runtime_context().get_node_id())

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


def spawn_shard(config: EngineConfig, group: PlacementGroup, rank: int) -> Any:
    """Start shard `rank`'s actor in bundle `rank` of `group`: its CPUs, and on CUDA one GPU."""
    return _RemoteShard.options(
        num_cpus=config.cpus_per_shard,
        num_gpus=1 if config.device.startswith("cuda") else 0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
    ).remote(config, rank)


class TensorParallelExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config: PretrainedConfig = AutoConfig.from_pretrained(config.model)
        check_shardable(self.model_config, config.tensor_parallel_size)
        self.generation_config = _generation_config(config.model)
        if not ray.is_initialized():
            ray.init()
        self._owned_group: PlacementGroup | None = None
        self._workers: list[Any] = []
        try:
            group = self._placement_group()
            self._workers = [spawn_shard(config, group, rank) for rank in range(config.tensor_parallel_size)]
            nodes: list[tuple[str, str]] = self._on_every_shard("node")
            port = ray.get(self._workers[0].open_node_store.remote())
            reports: list[ShardLoadReport] = self._on_every_shard_each(
                "load", [(nodes[0][1], port, sum(node == nodes[rank] for node in nodes)) for rank in range(len(nodes))]
            )
            # Every shard holds the same blocks (of its own heads): the smallest pool wins.
            self.num_kv_blocks = min(report.planned_kv_blocks for report in reports)
            self.max_model_len = reports[0].max_model_len
            self._on_every_shard("allocate_kv_cache", self.num_kv_blocks)
            self._shards: list[ShardInfo] = self._on_every_shard("info")
        except BaseException:
            self.close()
            raise
        logger.info(
            "tensor-parallel %s: %s",
            config.model,
            ", ".join(
                f"shard {shard.rank} on node {shard.node_id} ({shard.device}, {shard.weight_bytes / 2**20:.1f} MiB)"
                for shard in self._shards
            ),
        )

    def execute(self, batch: SchedulerOutput) -> SampledTokens:
        sampled: SampledTokens = self._on_every_shard("execute", ray.put(batch))[0]
        return sampled

    def shards(self) -> list[ShardInfo]:
        return list(self._shards)

    def check_health(self) -> None:
        """Raise EngineDeadError unless every shard answers within HEALTH_PING_TIMEOUT_S."""
        try:
            ray.get([worker.ping.remote() for worker in self._workers], timeout=HEALTH_PING_TIMEOUT_S)
        except (RayError, GetTimeoutError) as error:
            raise EngineDeadError(f"a tensor-parallel shard is not answering: {type(error).__name__}") from error

    def close(self) -> None:
        """Stop the shards (even one blocked in a collective) and release an owned placement group."""
        workers, self._workers = self._workers, []
        for worker in workers:
            ray.kill(worker, no_restart=True)
        group, self._owned_group = self._owned_group, None
        if group is not None:
            remove_placement_group(group)

    def _placement_group(self) -> PlacementGroup:
        """The replica's group when running in one, else a new group of one bundle per shard."""
        current = get_current_placement_group()
        size = self.config.tensor_parallel_size
        if current is not None:
            if len(current.bundle_specs) < size:
                raise EngineError(
                    f"tensor_parallel_size={size} needs a bundle per shard, but this process's placement "
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
        """Call `method` on every shard; results by rank. The first shard to fail raises at once."""
        return self._on_every_shard_each(method, [args] * len(self._workers))

    def _on_every_shard_each(self, method: str, args_by_rank: list[tuple[Any, ...]]) -> list[Any]:
        """Call `method` on every shard with its own arguments; results by rank."""
        refs = [getattr(worker, method).remote(*args) for worker, args in zip(self._workers, args_by_rank)]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except RayTaskError as error:
                if isinstance(error.cause, ValueError):  # the config does not suit the model
                    raise error.cause from None
                raise EngineDeadError(
                    f"tensor-parallel shard {rank_of[ready[0]]} failed in {method}: {error}"
                ) from error
            except RayError as error:
                raise EngineDeadError(
                    f"tensor-parallel shard {rank_of[ready[0]]} failed in {method}: {error}"
                ) from error
        return ray.get(refs)


def _generation_config(model: str) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:  # a model without generation_config.json
        return None
