"""Offline throughput: Switchyard's engine against Hugging Face transformers, side by side.

Every system runs the same token-id workloads on the same tiny random-weight Llama
(`BENCHMARK_LLAMA`, written once to `--model-dir`), greedy, on the CPU, all in `--dtype` (default
auto: bfloat16 where this CPU multiplies it fast, else float32):

    hf-sequential               `generate` (SDPA, KV cache), one request at a time
    hf-static                   `generate` on consecutive left-padded batches of `--batch-size`
    hf-continuous               transformers' continuous batching (`init_continuous_batching`, SDPA,
                                its prefix sharing on), with the engine's batch cap, step budget and KV pool
    continuous                  the engine, iteration-level scheduling, prefix caching on
    continuous-metrics          the same, recording its metrics (prometheus_client) every step: the
                                cost of metrics (not run by default; `--systems continuous,continuous-metrics`)
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
import statistics
import sys
from pathlib import Path

import torch
import transformers

# Run as a script, Python puts benchmarks/ on the path, not the repository root that holds
# `engine` and the `benchmarks` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hf_runners import hf_decode_tokens_per_s, load_hf_model  # noqa: E402
from benchmarks.measure import measure_workload  # noqa: E402
from benchmarks.report import Row, build_metrics, print_header, print_ratios, print_table, print_targets  # noqa: E402
from benchmarks.settings import BenchSettings  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    WORKLOAD_BUILDERS,
    Workload,
    build_warmup,
    ordinary_token_ids,
    prepare_model,
)
from engine.config import DTYPE_CHOICES  # noqa: E402
from engine.hardware import auto_dtype  # noqa: E402

__all__ = ["SYSTEMS", "WORKLOADS", "DEFAULT_SYSTEMS", "DEFAULT_MODEL_DIR", "parse_names", "parse_args", "main"]

SYSTEMS: tuple[str, ...] = (
    "hf-sequential",
    "hf-static",
    "hf-continuous",
    "continuous",
    "continuous-metrics",
    "continuous-no-prefix-cache",
    "static",
    "request",
)
WORKLOADS: tuple[str, ...] = ("W1", "W2", "W3")
# Prefix caching only changes anything on W3, so only W3 runs the engine without it by default.
_COMPARED = tuple(system for system in SYSTEMS if system != "continuous-metrics")
DEFAULT_SYSTEMS: dict[str, tuple[str, ...]] = {
    "W1": tuple(system for system in _COMPARED if system != "continuous-no-prefix-cache"),
    "W2": tuple(system for system in _COMPARED if system != "continuous-no-prefix-cache"),
    "W3": _COMPARED,
}
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"


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
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="every system's dtype (auto: this CPU's fastest)"
    )
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
        dtype=auto_dtype("cpu") if args.dtype == "auto" else args.dtype,
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
    if "W1" in args.workloads:
        print_decode_ceiling(settings, workloads[args.workloads.index("W1")], rows)


def print_decode_ceiling(settings: BenchSettings, w1: Workload, rows: list[Row]) -> None:
    """W1 against Hugging Face's bare batched decode forward on W1's prompts (median of the repeats)."""
    model = load_hf_model(settings.model_dir, settings.dtype)
    prompts = [request.prompt for request in w1.requests]
    steps = w1.requests[0].max_tokens
    ceiling = statistics.median(hf_decode_tokens_per_s(model, prompts, steps) for _ in range(settings.repeats))
    continuous = next((row for row in rows if row.workload == "W1" and row.system == "continuous"), None)
    print(f"\nHugging Face decode forward alone, batch {len(prompts)}, {steps} steps: {ceiling:.1f} tok/s")
    if continuous is not None:
        ratio = continuous.tokens_per_s / ceiling
        verdict = "met" if ratio >= 1.5 else "NOT met"
        print(f"  W1 engine continuous / that ceiling                >= 1.50x  {ratio:.2f}x  {verdict}")


if __name__ == "__main__":
    main()
