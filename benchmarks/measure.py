"""Every system by name, and the round-robin loop that times them on a workload into report rows."""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.engine_runners import (
    run_continuous,
    run_continuous_no_prefix_cache,
    run_continuous_with_metrics,
    run_request,
    run_static,
)
from benchmarks.hf_runners import run_hf_continuous, run_hf_sequential, run_hf_static
from benchmarks.report import Row
from benchmarks.settings import BenchSettings, RunResult
from benchmarks.workloads import Request, Workload

__all__ = ["Runner", "RUNNERS", "has_time_for_another_run", "measure_workload"]

Runner = Callable[[BenchSettings, Workload, list[Request]], RunResult]

RUNNERS: dict[str, Runner] = {
    "hf-sequential": run_hf_sequential,
    "hf-static": run_hf_static,
    "hf-continuous": run_hf_continuous,
    "continuous": run_continuous,
    "continuous-metrics": run_continuous_with_metrics,
    "continuous-no-prefix-cache": run_continuous_no_prefix_cache,
    "static": run_static,
    "request": run_request,
}


def has_time_for_another_run(spent_seconds: float, num_runs: int, max_row_seconds: float) -> bool:
    """Whether one more run, as long as the average so far, keeps the row within its time cap."""
    return spent_seconds + spent_seconds / num_runs <= max_row_seconds


def measure_workload(
    settings: BenchSettings, workload: Workload, systems: list[str], warmup: list[Request]
) -> list[Row]:
    """Runs the systems round-robin, `settings.repeats` rounds, so a slow spell of the machine
    spreads over all systems instead of landing on one row."""
    runs: dict[str, list[RunResult]] = {system: [] for system in systems}
    spent: dict[str, float] = dict.fromkeys(systems, 0.0)
    for round_index in range(settings.repeats):
        for system in systems:
            num_runs = len(runs[system])
            if num_runs and not has_time_for_another_run(spent[system], num_runs, settings.max_row_seconds):
                continue
            start = time.perf_counter()
            result = RUNNERS[system](settings, workload, warmup)
            spent[system] += time.perf_counter() - start
            runs[system].append(result)
            print(
                f"  {workload.name} {system} run {round_index + 1}: "
                f"{result.output_tokens / result.seconds:.1f} tok/s in {result.seconds:.1f}s",
                flush=True,
            )
    return [Row(workload.name, system, runs[system], spent[system]) for system in systems]
