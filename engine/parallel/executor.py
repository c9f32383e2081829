"""The `execute` verb of a step: runs a scheduled batch on the model and samples.

Two executors share one interface: `InProcessExecutor` (the whole model in this process) and
`ShardedExecutor` (Ray actors: tensor-parallel shards, pipeline stages); `create_executor` picks
one. An executor may keep batches in flight (pipeline stages run several at once): `execute`
then hands back an earlier batch with its tokens, or None while the new one is on its way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.config import EngineConfig
from engine.outputs import ShardInfo
from engine.parallel.in_process import InProcessExecutor
from engine.step_data import SampledTokens, SchedulerOutput

if TYPE_CHECKING:
    from transformers import GenerationConfig, PretrainedConfig

__all__ = ["Executor", "create_executor"]


class Executor(Protocol):
    model_config: PretrainedConfig
    generation_config: GenerationConfig | None
    num_kv_blocks: int
    max_model_len: int

    @property
    def num_in_flight(self) -> int:
        """Batches submitted whose tokens `execute` has not handed back yet."""
        ...

    def execute(self, batch: SchedulerOutput) -> tuple[SchedulerOutput, SampledTokens] | None:
        """Run `batch` (empty only while batches are in flight); return a batch that is done and
        its sampled tokens, or None while the pipeline has room and `batch` is on its way."""
        ...

    def shards(self) -> list[ShardInfo]: ...

    def check_health(self) -> None: ...

    def close(self) -> None: ...


def create_executor(config: EngineConfig) -> Executor:
    if config.num_shards == 1:
        return InProcessExecutor(config)
    from engine.parallel.sharded_executor import ShardedExecutor  # imports Ray, which one shard never needs

    return ShardedExecutor(config)
