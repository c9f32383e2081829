"""Switchyard's engine under each scheduling policy, with its prefix-cache and KV-waste counters
(and, for the metrics-cost row, recording its metrics as a server does)."""

from __future__ import annotations

import statistics
import time

from prometheus_client import CollectorRegistry

from benchmarks.settings import BenchSettings, RunResult
from benchmarks.workloads import Request, Workload, check_lengths
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.metrics import EngineMetrics, PrometheusBackend

__all__ = [
    "engine_config",
    "drive_engine",
    "run_engine",
    "time_engine",
    "run_continuous",
    "run_continuous_with_metrics",
    "run_continuous_no_prefix_cache",
    "run_static",
    "run_request",
]


def engine_config(settings: BenchSettings, scheduling: str, prefix_caching: bool) -> EngineConfig:
    return EngineConfig(
        model=str(settings.model_dir),
        dtype=settings.dtype,
        device="cpu",
        scheduling=scheduling,
        max_num_seqs=settings.batch_size,
        max_num_batched_tokens=settings.max_batched_tokens,
        enable_prefix_caching=prefix_caching,
        num_kv_blocks=settings.num_kv_blocks,
        block_size=settings.block_size,
    )


def drive_engine(
    engine: LLMEngine, requests: list[Request], id_prefix: str
) -> tuple[list[list[int]], list[float]]:
    """Runs the requests to completion; returns their tokens and the KV waste after each step that held KV."""
    request_ids = [f"{id_prefix}{index}" for index in range(len(requests))]
    for request_id, request in zip(request_ids, requests):
        params = SamplingParams(max_tokens=request.max_tokens, temperature=0.0, ignore_eos=True)
        engine.add_request(request_id, request.prompt, params)
    generated: dict[str, list[int]] = {}
    wastes: list[float] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                generated[output.request_id] = output.token_ids
        stats = engine.stats()
        if stats.kv_blocks_used:
            wastes.append(stats.kv_waste)
    return [generated[request_id] for request_id in request_ids], wastes


def run_engine(
    settings: BenchSettings,
    workload: Workload,
    warmup: list[Request],
    scheduling: str,
    prefix_caching: bool,
) -> RunResult:
    return time_engine(engine_config(settings, scheduling, prefix_caching), workload, warmup)


def time_engine(
    config: EngineConfig, workload: Workload, warmup: list[Request], with_metrics: bool = False
) -> RunResult:
    """A fresh engine from `config`, warmed up untimed on `warmup`, timed on `workload`;
    `with_metrics`: recording every step into prometheus_client instruments (a fresh registry)."""
    on_stats = EngineMetrics(PrometheusBackend(CollectorRegistry()), "bench").record if with_metrics else None
    engine = LLMEngine(config, on_stats=on_stats)
    drive_engine(engine, warmup, "warmup-")
    before = engine.stats()
    start = time.perf_counter()
    generated, wastes = drive_engine(engine, workload.requests, "request-")
    seconds = time.perf_counter() - start
    after = engine.stats()
    check_lengths(workload.requests, generated, f"engine ({config.scheduling})")
    queried = after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens
    hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
    return RunResult(
        seconds=seconds,
        output_tokens=workload.output_tokens,
        prompt_tokens_computed=after.num_prompt_tokens_computed - before.num_prompt_tokens_computed,
        mean_kv_waste=statistics.fmean(wastes) if wastes else None,
        prefix_hit_rate=hits / queried if queried else None,
    )


def run_continuous(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "continuous", prefix_caching=True)


def run_continuous_with_metrics(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    config = engine_config(settings, "continuous", prefix_caching=True)
    return time_engine(config, workload, warmup, with_metrics=True)


def run_continuous_no_prefix_cache(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "continuous", prefix_caching=False)


def run_static(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "static", prefix_caching=True)


def run_request(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "request", prefix_caching=True)
