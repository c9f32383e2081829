"""The `execute` verb of a step: runs a scheduled batch on the model and samples.

Two executors share one interface: `InProcessExecutor` (the model in this process, TP=1) and
`TensorParallelExecutor` (one Ray actor per shard); `create_executor` picks one.
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

    def execute(self, batch: SchedulerOutput) -> SampledTokens: ...

    def shards(self) -> list[ShardInfo]: ...

    def check_health(self) -> None: ...

    def close(self) -> None: ...


def create_executor(config: EngineConfig) -> Executor:
    if config.tensor_parallel_size == 1:
        return InProcessExecutor(config)
    from engine.parallel.tp_executor import TensorParallelExecutor  # imports Ray, which TP=1 never needs

    return TensorParallelExecutor(config)
