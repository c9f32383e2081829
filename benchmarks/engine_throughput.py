"""Offline throughput: Switchyard's engine against Hugging Face transformers, side by side.

Every system runs the same token-id workloads on the same tiny random-weight Llama
(`BENCHMARK_LLAMA`, written once to `--model-dir`), greedy, float32, on the CPU:

    hf-sequential               `generate` (SDPA, KV cache), one request at a time
    hf-static                   `generate` on consecutive left-padded batches of `--batch-size`
    hf-continuous               transformers' continuous batching (`init_continuous_batching`, SDPA,
                                its prefix sharing on), with the engine's batch cap, step budget and KV pool
    continuous                  the engine, iteration-level scheduling, prefix caching on
    continuous-no-prefix-cache  the same with prefix caching off (by default on W3 only)
    static                      the engine, batches of `--batch-size` that run until their last member ends
    request                     the engine, one request at a time

Workloads (prompts are random ordinary token ids drawn with a fixed seed):

    W1  32 prompts of 16-128 tokens, 64 new tokens each
    W2  48 prompts of 16-256 tokens, 8-256 new tokens each
    W3  16 prompts sharing a 512-token prefix plus 32 unique tokens each, 32 new tokens each

Every request generates exactly its `max_tokens` (EOS is ignored), so all systems do the same
useful work, and output tokens/s counts only those tokens: a static batch that runs on for its
longest member gets no credit for the extra tokens. Each timed run gets a fresh engine (or
continuous-batching manager), warmed up on a small untimed workload, so no run finds prompts of
an earlier one in its prefix cache. Systems take turns run by run; the table shows the median
of `--repeats` runs (fewer for a row whose next run would take it past `--max-row-seconds`) and
the wall time of each row, loading and warm-ups included.

Run from the repository root:

    .venv/bin/python benchmarks/engine_throughput.py
    .venv/bin/python benchmarks/engine_throughput.py --quick
    .venv/bin/python benchmarks/engine_throughput.py --workloads W2 --systems continuous,static,request
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching import ContinuousBatchingManager

# Run as a script, Python puts benchmarks/ on the path, not the repository root that holds `engine`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import EngineConfig, EngineStats, LLMEngine, SamplingParams  # noqa: E402
from engine.tiny_models import BENCHMARK_LLAMA, write_tiny_model  # noqa: E402

SYSTEMS: tuple[str, ...] = (
    "hf-sequential",
    "hf-static",
    "hf-continuous",
    "continuous",
    "continuous-no-prefix-cache",
    "static",
    "request",
)
WORKLOADS: tuple[str, ...] = ("W1", "W2", "W3")
# Prefix caching only changes anything on W3, so only W3 runs the engine without it by default.
DEFAULT_SYSTEMS: dict[str, tuple[str, ...]] = {
    "W1": tuple(system for system in SYSTEMS if system != "continuous-no-prefix-cache"),
    "W2": tuple(system for system in SYSTEMS if system != "continuous-no-prefix-cache"),
    "W3": SYSTEMS,
}
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"
# Seconds a continuous-batching manager may go without producing a result before the run fails.
HF_CONTINUOUS_RESULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    requests: list[Request]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(request.prompt) for request in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(request.max_tokens for request in self.requests)


@dataclass(frozen=True)
class BenchSettings:
    model_dir: Path
    threads: int
    repeats: int
    # A row stops repeating once another run would take it past this many seconds.
    max_row_seconds: float
    # Most requests in one batch or step, for every batched system: hf-static's batches,
    # hf-continuous, and the engine's `max_num_seqs` in all its modes (so static and continuous
    # differ by the scheduling flag alone).
    batch_size: int
    # Token budget of one step for hf-continuous and the engine.
    max_batched_tokens: int
    # KV pool of hf-continuous and the engine, in blocks of `block_size` tokens.
    num_kv_blocks: int
    block_size: int


@dataclass(frozen=True)
class RunResult:
    """One timed run of one system on one workload."""

    seconds: float
    output_tokens: int
    # Engine counters over the run; None for the transformers baselines.
    prompt_tokens_computed: int | None = None
    mean_kv_waste: float | None = None
    prefix_hit_rate: float | None = None


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


# ----- model and workloads ------------------------------------------------------------------


def prepare_model(model_dir: Path) -> Path:
    """Writes the benchmark model into `model_dir` unless it is already there."""
    return write_tiny_model(model_dir, BENCHMARK_LLAMA)


def ordinary_token_ids(model_dir: Path) -> list[int]:
    """Every token id of the vocabulary except the special ones (BOS, EOS, padding, chat markers)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special = set(tokenizer.all_special_ids)
    return [token_id for token_id in range(len(tokenizer)) if token_id not in special]


def random_tokens(rng: random.Random, vocabulary: list[int], count: int) -> list[int]:
    return rng.choices(vocabulary, k=count)


def build_w1(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, max_prompt, new_tokens = (8, 64, 16) if quick else (32, 128, 64)
    rng = random.Random(1)
    requests = [
        Request(random_tokens(rng, vocabulary, rng.randint(16, max_prompt)), new_tokens) for _ in range(num_requests)
    ]
    description = f"{num_requests} prompts of 16-{max_prompt} tokens, {new_tokens} new tokens each"
    return Workload("W1", description, requests)


def build_w2(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, max_prompt, max_new = (12, 128, 64) if quick else (48, 256, 256)
    rng = random.Random(2)
    requests = [
        Request(random_tokens(rng, vocabulary, rng.randint(16, max_prompt)), rng.randint(8, max_new))
        for _ in range(num_requests)
    ]
    description = f"{num_requests} prompts of 16-{max_prompt} tokens, 8-{max_new} new tokens each"
    return Workload("W2", description, requests)


def build_w3(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, prefix_len, unique_len, new_tokens = (4, 128, 16, 8) if quick else (16, 512, 32, 32)
    rng = random.Random(3)
    prefix = random_tokens(rng, vocabulary, prefix_len)
    requests = [
        Request(prefix + random_tokens(rng, vocabulary, unique_len), new_tokens) for _ in range(num_requests)
    ]
    description = (
        f"{num_requests} prompts: a shared {prefix_len}-token prefix + {unique_len} unique tokens,"
        f" {new_tokens} new tokens each"
    )
    return Workload("W3", description, requests)


def build_warmup(vocabulary: list[int]) -> list[Request]:
    """A small workload run untimed on every fresh system, with prompts no benchmark workload shares."""
    rng = random.Random(0)
    return [Request(random_tokens(rng, vocabulary, 24), 4) for _ in range(4)]


WORKLOAD_BUILDERS: dict[str, Callable[[list[int], bool], Workload]] = {
    "W1": build_w1,
    "W2": build_w2,
    "W3": build_w3,
}


def check_lengths(requests: list[Request], generated: list[list[int]], system: str) -> None:
    for index, (request, token_ids) in enumerate(zip(requests, generated, strict=True)):
        if len(token_ids) != request.max_tokens:
            raise RuntimeError(
                f"{system}: request {index} generated {len(token_ids)} tokens, expected {request.max_tokens}"
            )


# ----- transformers baselines -----------------------------------------------------------------


@cache
def load_hf_model(model_dir: Path) -> transformers.PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def hf_generate_batch(model: transformers.PreTrainedModel, requests: list[Request]) -> list[list[int]]:
    """One left-padded `generate` call; the batch runs to its largest `max_tokens`, each request keeps its own."""
    pad_id = model.generation_config.pad_token_id
    width = max(len(request.prompt) for request in requests)
    input_ids = [[pad_id] * (width - len(request.prompt)) + request.prompt for request in requests]
    attention_mask = [[0] * (width - len(request.prompt)) + [1] * len(request.prompt) for request in requests]
    new_tokens = max(request.max_tokens for request in requests)
    output = model.generate(
        input_ids=torch.tensor(input_ids),
        attention_mask=torch.tensor(attention_mask),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
    )
    generated = output[:, width:].tolist()
    return [token_ids[: request.max_tokens] for request, token_ids in zip(requests, generated)]


def hf_generate_in_batches(
    model: transformers.PreTrainedModel, requests: list[Request], batch_size: int
) -> list[list[int]]:
    generated: list[list[int]] = []
    for start in range(0, len(requests), batch_size):
        generated.extend(hf_generate_batch(model, requests[start : start + batch_size]))
    return generated


def run_hf_generate(
    settings: BenchSettings, workload: Workload, warmup: list[Request], batch_size: int, system: str
) -> RunResult:
    model = load_hf_model(settings.model_dir)
    with torch.inference_mode():
        hf_generate_in_batches(model, warmup, batch_size)
        start = time.perf_counter()
        generated = hf_generate_in_batches(model, workload.requests, batch_size)
        seconds = time.perf_counter() - start
    check_lengths(workload.requests, generated, system)
    return RunResult(seconds=seconds, output_tokens=workload.output_tokens)


def run_hf_sequential(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_hf_generate(settings, workload, warmup, batch_size=1, system="hf-sequential")


def run_hf_static(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_hf_generate(settings, workload, warmup, batch_size=settings.batch_size, system="hf-static")


def hf_continuous_config(settings: BenchSettings) -> ContinuousBatchingConfig:
    """The engine's limits, in transformers' terms: same KV pool, page size, step budget and batch cap."""
    return ContinuousBatchingConfig(
        page_size=settings.block_size,
        num_blocks=settings.num_kv_blocks,
        max_batch_tokens=settings.max_batched_tokens,
        max_requests_per_batch=settings.batch_size,
        # No flash attention on the CPU: stay on SDPA (and say so, instead of probing for it).
        auto_switch_to_flash=False,
    )


def hf_continuous_generate(
    manager: ContinuousBatchingManager, requests: list[Request], id_prefix: str
) -> list[list[int]]:
    request_ids = [f"{id_prefix}{index}" for index in range(len(requests))]
    for request_id, request in zip(request_ids, requests):
        manager.add_request(request.prompt, request_id=request_id, max_new_tokens=request.max_tokens)
    generated: dict[str, list[int]] = {}
    while len(generated) < len(request_ids):
        result = manager.get_result(timeout=HF_CONTINUOUS_RESULT_TIMEOUT_S)
        if result is None:
            raise RuntimeError("hf-continuous: the generation loop stopped or stalled before every request finished")
        if result.error is not None:
            raise RuntimeError(f"hf-continuous: request {result.request_id} failed: {result.error}")
        if result.is_finished():
            generated[result.request_id] = result.generated_tokens
    return [generated[request_id] for request_id in request_ids]


def run_hf_continuous(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    model = load_hf_model(settings.model_dir)
    # Greedy; EOS -1 never matches, so every request runs to its own max_new_tokens.
    generation_config = GenerationConfig(do_sample=False, eos_token_id=-1)
    with model.continuous_batching_context_manager(
        generation_config=generation_config,
        continuous_batching_config=hf_continuous_config(settings),
        block=True,
    ) as manager:
        hf_continuous_generate(manager, warmup, "warmup-")
        start = time.perf_counter()
        generated = hf_continuous_generate(manager, workload.requests, "request-")
        seconds = time.perf_counter() - start
    check_lengths(workload.requests, generated, "hf-continuous")
    return RunResult(seconds=seconds, output_tokens=workload.output_tokens)


# ----- the engine -----------------------------------------------------------------------------


def engine_config(settings: BenchSettings, scheduling: str, prefix_caching: bool) -> EngineConfig:
    return EngineConfig(
        model=str(settings.model_dir),
        dtype="float32",
        device="cpu",
        scheduling=scheduling,
        max_num_seqs=settings.batch_size,
        max_num_batched_tokens=settings.max_batched_tokens,
        enable_prefix_caching=prefix_caching,
        num_kv_blocks=settings.num_kv_blocks,
        block_size=settings.block_size,
    )


def kv_waste(stats: EngineStats, block_size: int) -> float:
    return 1.0 - stats.kv_tokens_stored / (stats.kv_blocks_used * block_size)


def drive_engine(
    engine: LLMEngine, requests: list[Request], id_prefix: str, block_size: int
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
            wastes.append(kv_waste(stats, block_size))
    return [generated[request_id] for request_id in request_ids], wastes


def run_engine(
    settings: BenchSettings,
    workload: Workload,
    warmup: list[Request],
    scheduling: str,
    prefix_caching: bool,
) -> RunResult:
    engine = LLMEngine(engine_config(settings, scheduling, prefix_caching))
    drive_engine(engine, warmup, "warmup-", settings.block_size)
    before = engine.stats()
    start = time.perf_counter()
    generated, wastes = drive_engine(engine, workload.requests, "request-", settings.block_size)
    seconds = time.perf_counter() - start
    after = engine.stats()
    check_lengths(workload.requests, generated, f"engine ({scheduling})")
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


def run_continuous_no_prefix_cache(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "continuous", prefix_caching=False)


def run_static(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "static", prefix_caching=True)


def run_request(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_engine(settings, workload, warmup, "request", prefix_caching=True)


Runner = Callable[[BenchSettings, Workload, list[Request]], RunResult]

RUNNERS: dict[str, Runner] = {
    "hf-sequential": run_hf_sequential,
    "hf-static": run_hf_static,
    "hf-continuous": run_hf_continuous,
    "continuous": run_continuous,
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


# ----- report ---------------------------------------------------------------------------------


def format_optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_header(settings: BenchSettings, workloads: list[Workload]) -> None:
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {settings.threads} threads, "
        f"float32, greedy; model {settings.model_dir}"
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


# ----- command line ---------------------------------------------------------------------------


def parse_names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated subset of {', '.join(allowed)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workloads",
        type=lambda text: parse_names(text, WORKLOADS, "--workloads"),
        default=list(WORKLOADS),
        help="comma-separated workloads (default: W1,W2,W3)",
    )
    parser.add_argument(
        "--systems",
        type=lambda text: parse_names(text, SYSTEMS, "--systems"),
        help="comma-separated systems, run on every workload (default: all; continuous-no-prefix-cache on W3 only)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the table shows medians")
    parser.add_argument(
        "--max-row-seconds",
        type=float,
        default=180.0,
        help="start no further run of a row that would take it past this (each row runs at least once)",
    )
    parser.add_argument("--quick", action="store_true", help="small workloads, for a smoke run")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the benchmark model lives")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="most requests per batch or step: hf-static, hf-continuous and the engine's max_num_seqs",
    )
    parser.add_argument(
        "--max-batched-tokens", type=int, default=2048, help="token budget per step, hf-continuous and the engine"
    )
    parser.add_argument("--num-kv-blocks", type=int, default=2048, help="KV pool size, hf-continuous and the engine")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block (page)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    settings = BenchSettings(
        model_dir=prepare_model(args.model_dir),
        threads=args.threads,
        repeats=args.repeats,
        max_row_seconds=args.max_row_seconds,
        batch_size=args.batch_size,
        max_batched_tokens=args.max_batched_tokens,
        num_kv_blocks=args.num_kv_blocks,
        block_size=args.block_size,
    )
    vocabulary = ordinary_token_ids(settings.model_dir)
    workloads = [WORKLOAD_BUILDERS[name](vocabulary, args.quick) for name in args.workloads]
    warmup = build_warmup(vocabulary)
    print_header(settings, workloads)
    rows: list[Row] = []
    for workload in workloads:
        systems = args.systems or list(DEFAULT_SYSTEMS[workload.name])
        rows.extend(measure_workload(settings, workload, systems, warmup))
    print()
    print_table(rows)
    metrics = build_metrics(rows)
    print_ratios(metrics)
    print_targets(metrics)


if __name__ == "__main__":
    main()
