"""Sections 1, 3 and 4 of the GPU check: batched throughput and the KV waste behind it.

1. The engine against transformers' continuous batching (`init_continuous_batching`, through
   hf_runners), on one W2-shaped workload with the same batch cap, step budget and KV pool.
3. The engine's three scheduling policies on the same workload with a batch cap below the number
   of requests, so static batches wait for their longest member and request-at-a-time runs alone.
4. The mean KV waste of every engine run of sections 1 and 3.

Ratios and targets are report.py's (`build_metrics`), computed on these rows.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.engine_runners import time_engine
from benchmarks.gpu_budget import SectionSkipped
from benchmarks.gpu_context import BLOCK_SIZE, CheckContext, EngineRun
from benchmarks.gpu_models import ModelShape, load_reference_model, ordinary_tokens
from benchmarks.gpu_tables import Column, Table
from benchmarks.report import Metric, Row, build_metrics, format_metric
from benchmarks.settings import BenchSettings, RunResult
from benchmarks.workloads import Request, Workload, build_mixed_lengths, build_warmup
from engine.config import Scheduling

__all__ = ["POLICIES", "engine_vs_transformers", "kv_waste", "ratios_table", "scheduling_policies"]

RUN_COLUMNS = (
    Column("system"),
    Column("batch cap", "d"),
    Column("requests", "d"),
    Column("out tok", ","),
    Column("seconds", ".2f"),
    Column("tok/s", ",.0f"),
    Column("KV waste", ".1%"),
)
# The claim under test first (continuous far ahead of request-at-a-time), so a section stopped at
# its limit has measured it before static batching.
POLICIES: tuple[Scheduling, ...] = ("continuous", "request", "static")
_TIMING_NOTE = "one timed run per row, on a fresh engine (or manager) after an untimed warm-up; EOS ignored"


def engine_vs_transformers(context: CheckContext, tables: list[Table], shape: ModelShape, num_requests: int) -> None:
    """Section 1: the engine, then transformers' continuous batching, on the same workload and limits."""
    batch_cap = context.sizes.batch_size
    model_dir = context.model_dir(shape)
    workload, warmup = _workload(context, shape, num_requests)
    table = Table(f"{shape.name}, {context.dtype}: {workload.description}", list(RUN_COLUMNS))
    tables.append(table)
    rows: list[Row] = []
    result = time_engine(context.engine_config(model_dir, batch_cap), workload, warmup)
    context.engine_runs.append(EngineRun(f"1 {shape.name}", "continuous", batch_cap, num_requests, result))
    _add_run(table, rows, "continuous", batch_cap, workload, result)
    # Imported here: continuous batching is the newest transformers API this check uses, and a
    # transformers without it should fail this section only.
    from benchmarks.hf_runners import hf_continuous_config, time_hf_continuous

    hf_model = load_reference_model(model_dir, context.torch_dtype, context.device)
    hf_config = hf_continuous_config(_settings(context, model_dir))
    result = time_hf_continuous(hf_model, hf_config, workload, warmup)
    _add_run(table, rows, "hf-continuous", batch_cap, workload, result)
    table.notes.append(_TIMING_NOTE)
    table.notes.append("hf-continuous: SDPA, its prefix sharing on, transformers' defaults otherwise (CUDA graphs too)")
    tables.append(ratios_table(rows))


def scheduling_policies(context: CheckContext, tables: list[Table]) -> None:
    """Section 3: continuous, static and request-at-a-time scheduling of one mixed-length workload."""
    sizes = context.sizes
    batch_cap = sizes.scheduling_batch_size
    model_dir = context.model_dir(sizes.model)
    workload, warmup = _workload(context, sizes.model, sizes.num_requests)
    table = Table(f"{sizes.model.name}, {context.dtype}: {workload.description}", list(RUN_COLUMNS))
    table.notes.append(_TIMING_NOTE)
    table.notes.append(
        f"request: the first {sizes.num_request_mode} requests only; it runs one at a time, so its tok/s "
        "does not depend on how many it is given"
    )
    tables.append(table)
    rows: list[Row] = []
    for policy in POLICIES:
        requests = workload.requests[: sizes.num_request_mode] if policy == "request" else workload.requests
        policy_workload = Workload(workload.name, workload.description, requests)
        result = time_engine(context.engine_config(model_dir, batch_cap, scheduling=policy), policy_workload, warmup)
        context.engine_runs.append(EngineRun("3", policy, batch_cap, len(requests), result))
        _add_run(table, rows, policy, batch_cap, policy_workload, result)
    tables.append(ratios_table(rows))


def kv_waste(context: CheckContext, tables: list[Table]) -> None:
    """Section 4: mean KV waste (1 - tokens stored / block slots in use, averaged over steps)."""
    columns = [Column("section"), Column("policy"), Column("batch cap", "d"), Column("requests", "d")]
    table = Table(f"mean KV waste over steps, {BLOCK_SIZE}-token blocks", [*columns, Column("KV waste", ".2%")])
    tables.append(table)
    for run in context.engine_runs:
        table.add_row(run.section, run.scheduling, run.batch_cap, run.num_requests, run.result.mean_kv_waste)
    if not table.rows:
        raise SectionSkipped("no engine run of section 1 or 3 finished")
    table.notes.append("paged blocks leave at most one part-filled block per sequence, whatever the batch")
    runs = [run for run in context.engine_runs if run.section == "3"]
    rows = [Row("W2", run.scheduling, [run.result], run.result.seconds) for run in runs]
    tables.append(_metrics_table([metric for metric in build_metrics(rows) if "KV waste" in metric.description]))


def ratios_table(rows: list[Row]) -> Table:
    """report.py's tok/s ratios, with their targets, that these rows measure."""
    return _metrics_table([metric for metric in build_metrics(rows) if metric.unit == "x" and metric.value is not None])


def _metrics_table(metrics: list[Metric]) -> Table:
    table = Table("ratios and targets", [Column("metric"), Column("value"), Column("target"), Column("verdict")])
    for metric in metrics:
        bound = "-"
        if metric.target is not None:
            sign = ">= " if metric.target.at_least else "<= "
            bound = sign + format_metric(metric.target.threshold, metric.unit)
        table.add_row(metric.description, format_metric(metric.value, metric.unit), bound, metric.verdict() or "-")
    return table


def _workload(context: CheckContext, shape: ModelShape, num_requests: int) -> tuple[Workload, list[Request]]:
    vocabulary = ordinary_tokens(shape)
    sizes = context.sizes
    return build_mixed_lengths(vocabulary, num_requests, sizes.max_prompt, sizes.max_new), build_warmup(vocabulary)


def _settings(context: CheckContext, model_dir: Path) -> BenchSettings:
    """Section 1's limits in the benchmark's terms, for transformers' continuous-batching config."""
    sizes = context.sizes
    return BenchSettings(
        model_dir=model_dir,
        threads=context.threads,
        repeats=1,
        max_row_seconds=math.inf,
        batch_size=sizes.batch_size,
        max_batched_tokens=sizes.max_batched_tokens,
        num_kv_blocks=sizes.num_kv_blocks,
        block_size=BLOCK_SIZE,
    )


def _add_run(table: Table, rows: list[Row], system: str, batch_cap: int, workload: Workload, result: RunResult) -> None:
    rows.append(Row(workload.name, system, [result], result.seconds))
    tokens = result.output_tokens
    tokens_per_s = tokens / result.seconds
    table.add_row(system, batch_cap, len(workload.requests), tokens, result.seconds, tokens_per_s, result.mean_kv_waste)
    print(f"  {system}: {tokens_per_s:,.0f} tok/s ({tokens:,} tokens in {result.seconds:.1f}s)", flush=True)
