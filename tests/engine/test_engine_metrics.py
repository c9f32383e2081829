"""Engine metrics: after a scripted run (tenants, prefix hits, preemption, an abort, stop and length),
each metric's value equals what the engine's stats and outputs say, in process and from an engine
process; a failed step counts its requests as errored and zeroes the load; a recorder that raises
breaks nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine import AsyncLLMEngine, EngineConfig, EngineDeadError, EngineStats, LLMEngine, RequestOutput, SamplingParams
from engine.metrics import ENGINE_METRICS, EngineMetrics, PrometheusBackend, StepStats
from engine.metrics.definitions import MetricSpec

MODEL = "tiny"
SHARED_PREFIX = list(range(1, 17))  # two full blocks of 8: the second request hits them
LONG = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


def small_pool_config(llama_dir: Path) -> EngineConfig:
    # 14 blocks of 8 tokens: three requests growing to 56-64 tokens (7-8 blocks) cannot all stay.
    return EngineConfig(
        model=str(llama_dir),
        dtype="float32",
        num_kv_blocks=14,
        block_size=8,
        max_num_seqs=4,
        max_model_len=128,
        enable_prefix_caching=True,
    )


class Readings:
    """Sample values of one registry's engine metrics for MODEL."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def value(self, name: str, **labels: str) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and sample.labels.get("model") == MODEL:
                    if all(sample.labels.get(key) == value for key, value in labels.items()):
                        total += sample.value
        return total

    def count(self, spec: MetricSpec, **labels: str) -> float:
        return self.value(f"{spec.name}_count", **labels)


def run_script(engine: LLMEngine) -> tuple[dict[str, RequestOutput], list[EngineStats]]:
    """Two tenants and the default one; a prefix shared by two requests; more KV demand than the
    pool; one abort while waiting. Returns the finished outputs and the stats after each step."""
    engine.add_request("a-long-1", SHARED_PREFIX + [40] * 4, LONG, tenant="team-a")
    engine.add_request("a-long-2", SHARED_PREFIX + [41] * 4, LONG, tenant="team-a")
    engine.add_request("b-long", [50] * 24, LONG, tenant="team-b")
    engine.add_request("b-aborted", [60] * 16, LONG, tenant="team-b")
    engine.add_request("anon-short", [70] * 8, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    engine.abort_request("b-aborted")
    finished: dict[str, RequestOutput] = {}
    stats_after_steps: list[EngineStats] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        stats_after_steps.append(engine.stats())
    return finished, stats_after_steps


@pytest.fixture(scope="module")
def scripted(llama_dir: Path) -> tuple[Readings, dict[str, RequestOutput], list[EngineStats], list[StepStats]]:
    registry = CollectorRegistry()
    metrics = EngineMetrics(PrometheusBackend(registry), MODEL)
    seen: list[StepStats] = []

    def record(stats: StepStats) -> None:
        seen.append(stats)
        metrics.record(stats)

    engine = LLMEngine(small_pool_config(llama_dir), on_stats=record)
    finished, stats_after_steps = run_script(engine)
    engine.close()
    return Readings(registry), finished, stats_after_steps, seen


def test_every_engine_metric_is_exported_with_its_help(
    scripted: tuple[Readings, dict[str, RequestOutput], list[EngineStats], list[StepStats]],
) -> None:
    readings = scripted[0]
    exported = {metric.name: metric for metric in readings.registry.collect()}
    for spec in ENGINE_METRICS:
        assert spec.name in exported, spec.name
        assert exported[spec.name].documentation == spec.help


def test_token_and_cache_counters_equal_the_engine_stats(
    scripted: tuple[Readings, dict[str, RequestOutput], list[EngineStats], list[StepStats]],
) -> None:
    readings, finished, stats_after_steps, _ = scripted
    final = stats_after_steps[-1]
    assert final.num_preemptions > 0 and final.prefix_cache_hit_tokens > 0  # the script exercised both
    assert readings.value("switchyard_generation_tokens_total") == final.num_generation_tokens
    assert readings.value("switchyard_prompt_tokens_computed_total") == final.num_prompt_tokens_computed
    assert readings.value("switchyard_prefix_cache_queries_total") == final.prefix_cache_queried_tokens
    assert readings.value("switchyard_prefix_cache_hits_total") == final.prefix_cache_hit_tokens
    assert readings.value("switchyard_num_preemptions_total") == final.num_preemptions
    generated = Counter()
    for request_id, output in finished.items():
        generated[request_id.split("-")[0]] += output.num_generated_tokens
    assert readings.value("switchyard_generation_tokens_total", tenant="team-a") == generated["a"]
    assert readings.value("switchyard_generation_tokens_total", tenant="anonymous") == generated["anon"]
    prompt_tokens = sum(len(output.prompt_token_ids) for output in finished.values())
    assert readings.value("switchyard_prompt_tokens_total") == prompt_tokens


def test_finished_requests_are_counted_by_reason_and_histograms_count_requests(
    scripted: tuple[Readings, dict[str, RequestOutput], list[EngineStats], list[StepStats]],
) -> None:
    readings, finished, _, _ = scripted
    assert len(finished) == 4
    assert readings.value("switchyard_requests_finished_total", finished_reason="length") == 4
    assert readings.value("switchyard_requests_finished_total", finished_reason="abort", tenant="team-b") == 1
    by_name = {spec.name: spec for spec in ENGINE_METRICS}
    # Every request that produced a token has a TTFT; every request that left has an e2e latency.
    assert readings.count(by_name["switchyard_time_to_first_token_seconds"]) == 4
    assert readings.count(by_name["switchyard_e2e_request_latency_seconds"]) == 5
    assert readings.count(by_name["switchyard_request_time_per_output_token_seconds"]) == 4
    assert readings.count(by_name["switchyard_request_prefill_time_seconds"]) == 4
    # The aborted request never ran: no queue time.
    assert readings.count(by_name["switchyard_request_queue_time_seconds"]) == 4
    inter_token = sum(output.num_generated_tokens - 1 for output in finished.values())
    assert readings.count(by_name["switchyard_inter_token_latency_seconds"]) == inter_token
    assert readings.value("switchyard_request_generation_tokens_sum") == sum(
        output.num_generated_tokens for output in finished.values()
    )


def test_iteration_histogram_counts_steps_and_tokens(
    scripted: tuple[Readings, dict[str, RequestOutput], list[EngineStats], list[StepStats]],
) -> None:
    readings, _, stats_after_steps, seen = scripted
    steps = [stats for stats in seen if stats.step_duration_s is not None]
    assert readings.value("switchyard_iteration_tokens_count") == len(steps) == len(stats_after_steps)
    final = stats_after_steps[-1]
    # Every token run is a prompt token computed (recompute included) or a decode token: a sampled
    # token that is not a request's first, nor the one its recompute after a preemption samples
    # (the script preempts only requests that had tokens).
    first_tokens = readings.count(
        {spec.name: spec for spec in ENGINE_METRICS}["switchyard_time_to_first_token_seconds"]
    )
    decode_tokens = final.num_generation_tokens - first_tokens - final.num_preemptions
    assert readings.value("switchyard_iteration_tokens_sum") == final.num_prompt_tokens_computed + decode_tokens


def test_load_gauges_follow_the_engine_after_every_step(llama_dir: Path) -> None:
    registry = CollectorRegistry()
    readings = Readings(registry)
    metrics = EngineMetrics(PrometheusBackend(registry), MODEL)
    engine = LLMEngine(small_pool_config(llama_dir), on_stats=metrics.record)
    for index in range(3):
        engine.add_request(f"r{index}", [80 + index] * 24, LONG, tenant="team-a")
    while engine.has_unfinished_requests():
        engine.step()
        stats = engine.stats()
        assert readings.value("switchyard_num_requests_running", tenant="team-a") == stats.num_running
        assert readings.value("switchyard_num_requests_waiting", tenant="team-a") == stats.num_waiting
        assert readings.value("switchyard_kv_cache_usage_perc") == pytest.approx(stats.kv_usage)
    assert readings.value("switchyard_num_requests_running") == 0
    assert readings.value("switchyard_kv_cache_usage_perc") == 0
    engine.close()


def test_an_engine_process_reports_its_stats_across_the_process_boundary(llama_dir: Path) -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(PrometheusBackend(registry), MODEL)

    async def scenario() -> None:
        engine = AsyncLLMEngine(
            small_pool_config(llama_dir), engine_process=True, num_threads=1, on_stats=metrics.record
        )
        await engine.start(timeout_s=120)
        try:
            prompts = {"a-1": SHARED_PREFIX + [40] * 4, "a-2": SHARED_PREFIX + [41] * 4, "b": [50] * 24}
            streams = [
                _drain(engine.generate(request_id, prompt, LONG, tenant="team-" + request_id[0]))
                for request_id, prompt in prompts.items()
            ]
            await asyncio.gather(*streams)
            final = await engine.stats()
        finally:
            await engine.shutdown()
        readings = Readings(registry)
        assert readings.value("switchyard_generation_tokens_total") == final.num_generation_tokens == 3 * 40
        assert readings.value("switchyard_prompt_tokens_computed_total") == final.num_prompt_tokens_computed
        assert readings.value("switchyard_prefix_cache_hits_total") == final.prefix_cache_hit_tokens
        assert readings.value("switchyard_time_to_first_token_seconds_count") == 3
        assert readings.value("switchyard_requests_finished_total", finished_reason="length", tenant="team-a") == 2
        assert readings.value("switchyard_num_requests_running") == 0

    asyncio.run(scenario())


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass


def test_a_failed_step_counts_its_requests_as_errored_and_zeroes_the_load(llama_dir: Path) -> None:
    registry = CollectorRegistry()
    readings = Readings(registry)
    metrics = EngineMetrics(PrometheusBackend(registry), MODEL)
    broken = LLMEngine(small_pool_config(llama_dir), on_stats=metrics.record)
    steps = 0
    execute = broken.executor.execute

    def fail_on_third_step(batch: object) -> object:
        nonlocal steps
        steps += 1
        if steps == 3:
            raise RuntimeError("device lost")
        return execute(batch)  # type: ignore[arg-type]

    broken.executor.execute = fail_on_third_step  # type: ignore[method-assign]

    async def scenario() -> None:
        engine = AsyncLLMEngine.from_engine(broken)  # the engine's on_stats comes along
        await engine.start()
        try:
            results = await asyncio.gather(
                _drain(engine.generate("x", [1, 2, 3], LONG, tenant="team-a")),
                _drain(engine.generate("y", [4, 5, 6], LONG)),
                return_exceptions=True,
            )
            assert all(isinstance(result, EngineDeadError) for result in results)
        finally:
            await engine.shutdown()

    asyncio.run(scenario())
    assert readings.value("switchyard_requests_finished_total", finished_reason="error", tenant="team-a") == 1
    assert readings.value("switchyard_requests_finished_total", finished_reason="error", tenant="anonymous") == 1
    assert readings.value("switchyard_num_requests_running") == 0


def test_a_recorder_that_raises_breaks_neither_steps_nor_streams(llama_dir: Path) -> None:
    calls = 0

    def broken_recorder(stats: StepStats) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("metrics backend down")

    async def scenario() -> None:
        engine = AsyncLLMEngine(small_pool_config(llama_dir), on_stats=broken_recorder)
        await engine.start()
        try:
            outputs = [output async for output in engine.generate("r", [1, 2, 3], LONG)]
            assert outputs[-1].finished and outputs[-1].num_generated_tokens == LONG.max_tokens
            with pytest.raises(asyncio.TimeoutError):  # a stream left early aborts: reported too
                await asyncio.wait_for(_drain(engine.generate("s", [4, 5, 6], LONG)), timeout=0.001)
            await engine.check_health()
        finally:
            await engine.shutdown()

    asyncio.run(scenario())
    assert calls > LONG.max_tokens
