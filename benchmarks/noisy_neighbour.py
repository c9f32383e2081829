"""Noisy neighbour: does a tenant flooding a replica slow another tenant's first token?

One replica's engine (AsyncLLMEngine in its own process, as an LLMServer replica runs it) on the
bench model (the quickstart's demo Llama), with `--max-num-seqs` small enough that requests queue:

    alone   tenant B sends short requests one after another for `--seconds`; nothing else runs
    fcfs    tenant A keeps `--a-in-flight` long requests in flight (each replaced when it ends) while
            B does the same as alone; the engine admits first come, first served
    fair    the same, with the engine's fair tenant scheduling (virtual token counters)

Reported per scenario (medians over `--repeats` runs): B's time to first token p50 / p99 and its
request count, A's output tokens/s and the whole engine's, both from the engine's own counter of
generated tokens over the window (so a request still running when the window ends counts what it
generated in it). Targets: B's p50 under fair within 2x of alone; total throughput under fair
within 5% of fcfs.

    .venv/bin/python -m benchmarks.noisy_neighbour [--repeats 3] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from deployments.config import ModelSource
from deployments.replica.model_source import resolve_model_source
from engine import AsyncLLMEngine, EngineConfig, SamplingParams

SCENARIOS = ("alone", "fcfs", "fair")


@dataclass(frozen=True)
class Run:
    b_ttfts_s: list[float]
    b_tokens: int
    # Tokens the engine generated in the window, for both tenants.
    total_tokens: int
    seconds: float

    @property
    def total_tokens_per_s(self) -> float:
        return self.total_tokens / self.seconds

    @property
    def a_tokens_per_s(self) -> float:
        return (self.total_tokens - self.b_tokens) / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--a-in-flight", type=int, default=32)
    parser.add_argument("--a-prompt-len", type=int, default=64)
    parser.add_argument("--a-output-len", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long B sends requests, per run")
    parser.add_argument("--b-prompt-len", type=int, default=16)
    parser.add_argument("--b-output-len", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the engine in its own process, as a replica does (--no-engine-process: on a thread)",
    )
    parser.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "switchyard" / "demo-llama")
    args = parser.parse_args()
    model = resolve_model_source(ModelSource(demo="llama", demo_dir=str(args.model_dir)))
    runs: dict[str, list[Run]] = {scenario: [] for scenario in SCENARIOS}
    for _ in range(args.repeats):
        for scenario in SCENARIOS:  # round-robin, so the machine's noise falls on every scenario alike
            runs[scenario].append(asyncio.run(_run(model, scenario, args)))
    _print(runs, args)


async def _run(model: str, scenario: str, args: argparse.Namespace) -> Run:
    policy = "fcfs" if scenario == "fcfs" else "fair"
    config = EngineConfig(
        model=model, max_num_seqs=args.max_num_seqs, num_kv_blocks=1024, max_model_len=512, tenant_scheduling=policy
    )
    if args.engine_process:
        engine = AsyncLLMEngine(config, engine_process=True, num_threads=args.threads)
    else:
        import torch

        torch.set_num_threads(args.threads)
        engine = AsyncLLMEngine(config)
    await engine.start()
    ids = itertools.count()
    stop_a = asyncio.Event()

    async def one(tenant: str, prompt_len: int, output_len: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
        prompt = [(7 * next(ids) + i) % 200 + 10 for i in range(prompt_len)]  # no shared prefixes
        sent = time.perf_counter()
        ttft = None
        tokens = 0
        async for output in engine.generate(f"{tenant}-{next(ids)}", prompt, params, tenant=tenant):
            ttft = time.perf_counter() - sent if ttft is None else ttft
            tokens = output.num_generated_tokens
        return ttft or 0.0, tokens

    async def tenant_a_lane() -> None:
        while not stop_a.is_set():
            await one("a", args.a_prompt_len, args.a_output_len)

    try:
        lanes = []
        if scenario != "alone":
            lanes = [asyncio.create_task(tenant_a_lane()) for _ in range(args.a_in_flight)]
            await _until_queued(engine, args.max_num_seqs)
        generated_before = (await engine.stats()).num_generation_tokens
        started = time.perf_counter()
        b = []
        while time.perf_counter() - started < args.seconds or not b:
            b.append(await one("b", args.b_prompt_len, args.b_output_len))
        seconds = time.perf_counter() - started
        generated = (await engine.stats()).num_generation_tokens - generated_before
        stop_a.set()
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        return Run([ttft for ttft, _ in b], sum(tokens for _, tokens in b), generated, seconds)
    finally:
        engine.close()


async def _until_queued(engine: AsyncLLMEngine, max_num_seqs: int) -> None:
    """Wait until A fills every slot and has requests waiting (the engine is saturated)."""
    deadline = time.monotonic() + 60
    while True:
        stats = await engine.stats()
        if stats.num_running >= max_num_seqs and stats.num_waiting > 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("tenant A never saturated the engine")
        await asyncio.sleep(0.05)


def _print(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    print(
        f"noisy neighbour: max_num_seqs {args.max_num_seqs}; A keeps {args.a_in_flight} requests of "
        f"{args.a_prompt_len}+{args.a_output_len} tokens in flight; B sends requests of "
        f"{args.b_prompt_len}+{args.b_output_len} one after another for {args.seconds:.0f} s; medians of "
        f"{args.repeats} runs"
    )
    print(
        f"{'scenario':<8} {'B requests':>10} {'B TTFT p50 ms':>14} {'B TTFT p99 ms':>14} {'A tok/s':>9} "
        f"{'total tok/s':>12}"
    )
    figures = {}
    for scenario, scenario_runs in runs.items():
        p50 = statistics.median(statistics.median(run.b_ttfts_s) for run in scenario_runs) * 1000
        p99 = statistics.median(_percentile(run.b_ttfts_s, 0.99) for run in scenario_runs) * 1000
        a_rate = statistics.median(run.a_tokens_per_s for run in scenario_runs)
        total = statistics.median(run.total_tokens_per_s for run in scenario_runs)
        num_b = statistics.median(len(run.b_ttfts_s) for run in scenario_runs)
        figures[scenario] = (p50, total)
        a_text = "-" if scenario == "alone" else f"{a_rate:.1f}"
        print(f"{scenario:<8} {num_b:>10.0f} {p50:>14.1f} {p99:>14.1f} {a_text:>9} {total:>12.1f}")
    fair_vs_alone = figures["fair"][0] / figures["alone"][0]
    fair_vs_fcfs = figures["fair"][1] / figures["fcfs"][1]
    print(f"B p50 TTFT fair / alone: {fair_vs_alone:.2f}x (target <= 2x: {_verdict(fair_vs_alone <= 2)})")
    print(f"total throughput fair / fcfs: {fair_vs_fcfs:.3f} (target >= 0.95: {_verdict(fair_vs_fcfs >= 0.95)})")


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


if __name__ == "__main__":
    main()
