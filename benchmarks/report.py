"""The report: the header, the table of rows, and the ratios and targets computed from the rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

from benchmarks.settings import BenchSettings, RunResult
from benchmarks.workloads import Workload

__all__ = [
    "Row",
    "Target",
    "Metric",
    "format_optional",
    "print_header",
    "print_table",
    "format_metric",
    "find_row",
    "speedup",
    "prefix_prompt_token_fraction",
    "continuous_metric",
    "build_metrics",
    "print_ratios",
    "print_targets",
]


@dataclass(frozen=True)
class Row:
    """All timed runs of one system on one workload, and the wall time the row took."""

    workload: str
    system: str
    runs: list[RunResult]
    row_seconds: float

    @property
    def seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def output_tokens(self) -> int:
        return self.runs[0].output_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def prompt_tokens_computed(self) -> float | None:
        return _median_or_none([run.prompt_tokens_computed for run in self.runs])

    @property
    def mean_kv_waste(self) -> float | None:
        return _median_or_none([run.mean_kv_waste for run in self.runs])

    @property
    def prefix_hit_rate(self) -> float | None:
        return _median_or_none([run.prefix_hit_rate for run in self.runs])


def _median_or_none(values: list[float | int | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def format_optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_header(settings: BenchSettings, workloads: list[Workload]) -> None:
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {settings.threads} threads, "
        f"{settings.dtype}, greedy; model {settings.model_dir}"
    )
    print(
        f"batches of up to {settings.batch_size} requests (every batched system); "
        f"{settings.max_batched_tokens} tokens per step; "
        f"KV pool {settings.num_kv_blocks} x {settings.block_size}-token blocks"
    )
    print(
        f"median of {settings.repeats} run(s) per row, fewer where more would take a row past "
        f"{settings.max_row_seconds:.0f}s"
    )
    for workload in workloads:
        print(
            f"  {workload.name}: {workload.description} "
            f"({workload.prompt_tokens} prompt tokens, {workload.output_tokens} output tokens)"
        )
    print(flush=True)


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'workload':<8} {'system':<26} {'out tok':>8} {'wall s':>8} {'tok/s':>8} "
        f"{'prompt tok':>10} {'KV waste':>8} {'prefix hit':>10} {'runs':>4} {'row s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.workload:<8} {row.system:<26} {row.output_tokens:>8} {row.seconds:>8.2f} "
            f"{row.tokens_per_s:>8.1f} {format_optional(row.prompt_tokens_computed, '.0f'):>10} "
            f"{format_optional(row.mean_kv_waste, '.1%'):>8} {format_optional(row.prefix_hit_rate, '.1%'):>10} "
            f"{len(row.runs):>4} {row.row_seconds:>7.1f}"
        )
    print()


@dataclass(frozen=True)
class Target:
    threshold: float
    # Met when the value is >= threshold; otherwise when it is <= threshold.
    at_least: bool


@dataclass(frozen=True)
class Metric:
    description: str
    value: float | None
    # "x" for a ratio, "%" for a fraction.
    unit: str
    target: Target | None = None

    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "not measured"
        if self.target.at_least:
            met = self.value >= self.target.threshold
        else:
            met = self.value <= self.target.threshold
        return "met" if met else "NOT met"


def format_metric(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if unit == "x" else f"{value:.1%}"


def find_row(rows: list[Row], workload: str, system: str) -> Row | None:
    return next((row for row in rows if row.workload == workload and row.system == system), None)


def speedup(rows: list[Row], workload: str, system: str, baseline: str) -> float | None:
    """Output tokens/s of `system` over those of `baseline` on `workload`."""
    row, base = find_row(rows, workload, system), find_row(rows, workload, baseline)
    return None if row is None or base is None else row.tokens_per_s / base.tokens_per_s


def prefix_prompt_token_fraction(rows: list[Row]) -> float | None:
    """W3 prompt tokens the engine computes with prefix caching, over those it computes without."""
    with_cache = find_row(rows, "W3", "continuous")
    without = find_row(rows, "W3", "continuous-no-prefix-cache")
    if with_cache is None or without is None:
        return None
    computed_with, computed_without = with_cache.prompt_tokens_computed, without.prompt_tokens_computed
    if computed_with is None or not computed_without:
        return None
    return computed_with / computed_without


def continuous_metric(rows: list[Row], workload: str, metric: Callable[[Row], float | None]) -> float | None:
    row = find_row(rows, workload, "continuous")
    return None if row is None else metric(row)


def build_metrics(rows: list[Row]) -> list[Metric]:
    return [
        Metric(
            "W1 continuous / hf-continuous, tok/s",
            speedup(rows, "W1", "continuous", "hf-continuous"),
            "x",
            Target(1.3, at_least=True),
        ),
        Metric(
            "W2 continuous / hf-continuous, tok/s",
            speedup(rows, "W2", "continuous", "hf-continuous"),
            "x",
            Target(1.5, at_least=True),
        ),
        Metric(
            "W2 continuous / static, tok/s",
            speedup(rows, "W2", "continuous", "static"),
            "x",
            Target(1.5, at_least=True),
        ),
        Metric(
            "W2 continuous / request, tok/s",
            speedup(rows, "W2", "continuous", "request"),
            "x",
            Target(5.0, at_least=True),
        ),
        Metric(
            "W3 prompt tokens computed, prefix cache on / off",
            prefix_prompt_token_fraction(rows),
            "%",
            Target(0.35, at_least=False),
        ),
        Metric(
            "W3 prefix cache on / off, tok/s",
            speedup(rows, "W3", "continuous", "continuous-no-prefix-cache"),
            "x",
            Target(1.5, at_least=True),
        ),
        Metric(
            "W2 continuous mean KV waste",
            continuous_metric(rows, "W2", lambda row: row.mean_kv_waste),
            "%",
            Target(0.04, at_least=False),
        ),
        Metric(
            "W3 continuous prefix-cache hit rate",
            continuous_metric(rows, "W3", lambda row: row.prefix_hit_rate),
            "%",
        ),
        *[
            Metric(
                f"{workload} metrics on / off, tok/s",
                speedup(rows, workload, "continuous-metrics", "continuous"),
                "x",
                Target(0.98, at_least=True),
            )
            for workload in ("W1", "W2", "W3")
        ],
    ]


def print_ratios(metrics: list[Metric]) -> None:
    print("ratios")
    for metric in metrics:
        print(f"  {metric.description:<50} {format_metric(metric.value, metric.unit):>8}")
    print()


def print_targets(metrics: list[Metric]) -> None:
    print("targets")
    for metric in metrics:
        if metric.target is None:
            continue
        bound = (">= " if metric.target.at_least else "<= ") + format_metric(metric.target.threshold, metric.unit)
        measured = format_metric(metric.value, metric.unit)
        print(f"  {metric.description:<50} {bound:>9} {measured:>9}  {metric.verdict()}")
