"""The engine with batches in flight (as pipeline stages keep them), without Ray: the in-process
executor behind a seam that hands each batch back one step late. A request preempted and aborted
while its batch is on its way is reported; its id is not reused while the batch is out."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.core import llm_engine
from engine.metrics.stats import StepStats
from engine.parallel.in_process import InProcessExecutor
from engine.step_data import SampledTokens, SchedulerOutput


class OneStepLate(InProcessExecutor):
    """Runs each batch at once but hands it back only when a second one comes (or none does), as
    two pipeline stages would."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.pending: deque[tuple[SchedulerOutput, SampledTokens]] = deque()

    @property
    def num_in_flight(self) -> int:
        return len(self.pending)

    def execute(self, batch: SchedulerOutput) -> tuple[SchedulerOutput, SampledTokens] | None:
        if not batch.is_empty:
            self.pending.append(super().execute(batch))
            if len(self.pending) < 2:
                return None
        return self.pending.popleft()


@pytest.fixture
def late_engine(llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LLMEngine, list[StepStats]]:
    monkeypatch.setattr(llm_engine, "create_executor", OneStepLate)
    reports: list[StepStats] = []
    # 8 blocks of 4 tokens: four 8-token prompts fill the pool, so decoding preempts.
    config = EngineConfig(
        model=str(llama_dir), dtype="float32", block_size=4, num_kv_blocks=8, pipeline_parallel_size=2
    )
    return LLMEngine(config, on_stats=reports.append), reports


def test_a_request_preempted_and_aborted_while_its_batch_is_out_is_reported(
    late_engine: tuple[LLMEngine, list[StepStats]],
) -> None:
    engine, reports = late_engine
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    for index in range(4):
        engine.add_request(f"r{index}", list(range(10 + 8 * index, 18 + 8 * index)), params, tenant=f"t{index}")
    executor = engine.executor
    assert isinstance(executor, OneStepLate)
    aborted: list[str] = []
    while engine.has_unfinished_requests():
        engine.step()
        for batch, _ in executor.pending:
            for request_id in batch.preempted_ids:
                if request_id not in aborted and engine.abort_request(request_id):
                    aborted.append(request_id)
    assert aborted, "no request was preempted while its batch was in flight"
    preempted = [tenant for report in reports for tenant, count in report.preemptions.items() for _ in range(count)]
    assert sorted(preempted) == sorted(f"t{request_id[1:]}" for request_id in aborted)
    assert engine.stats().kv_blocks_used == 0


def test_an_aborted_id_is_not_taken_again_while_its_batch_is_out(
    late_engine: tuple[LLMEngine, list[StepStats]],
) -> None:
    engine, _ = late_engine
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request("a", [5, 6, 7], params)
    engine.step()  # a's first chunk is in flight
    assert engine.abort_request("a")
    with pytest.raises(ValueError, match="'a' is still in the pipeline"):
        engine.add_request("a", [5, 6, 7], params)
    while engine.has_unfinished_requests():
        engine.step()
    engine.add_request("a", [5, 6, 7], params)  # its batch came back: the id is free
