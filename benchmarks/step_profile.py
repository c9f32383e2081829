"""Where a W1 engine step spends its time: schedule, prepare inputs, forward (attention, LM head,
the rest), sampling, scheduler update and output processing.

Runs W1 (32 prompts of 16-128 tokens, 64 new tokens each, greedy) on the bench Llama with one
engine, prefix caching off, after a warm-up run of the same workload (so that the matrix kernels
for its shapes exist), timing each phase by wrapping the engine's own methods and the attention function of
this process. Prints one table per dtype: milliseconds per phase, its share of the
run and per step. Run from the repository root:

    .venv/bin/python -m benchmarks.step_profile [--dtypes float32,bfloat16] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface

from benchmarks.workloads import build_w1, ordinary_token_ids, prepare_model
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.model import decoder_forward, model_runner, paged_attention

__all__ = ["PHASES", "profile_w1", "main"]

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"
PHASES: tuple[str, ...] = (
    "schedule",
    "prepare inputs",
    "attention (paged)",
    "LM head",
    "rest of forward (linears, norms, rotary)",
    "sampling",
    "scheduler update",
    "output processing",
    "engine loop, unaccounted",
)


class _Timer:
    """Wall seconds per phase name, summed over every call of the wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        return timed


def profile_w1(model_dir: Path, dtype: str) -> tuple[dict[str, float], float, int, int]:
    """Seconds per phase of one timed W1 run, its wall seconds, output tokens and engine steps."""
    timer = _Timer()
    # No prefix cache: the timed run prefills its prompts again instead of finding the warm-up's.
    config = EngineConfig(
        model=str(model_dir), dtype=dtype, max_num_seqs=32, num_kv_blocks=2048, enable_prefix_caching=False
    )
    engine = LLMEngine(config)
    runner = engine.executor.runner
    # The engine's decoder loop calls the attention function by its module-level name; Hugging
    # Face's layers find it in the registry at each call: both get the timed one.
    timed_attention = timer.wrap(paged_attention.paged_attention_forward, "attention (paged)")
    decoder_forward.paged_attention_forward = timed_attention
    AttentionInterface.register(paged_attention.PAGED_ATTENTION, timed_attention)
    model_runner.build_metadata = timer.wrap(model_runner.build_metadata, "prepare inputs")
    runner.forward = timer.wrap(runner.forward, "forward")
    runner.model.lm_head.forward = timer.wrap(runner.model.lm_head.forward, "LM head")
    engine.scheduler.schedule = timer.wrap(engine.scheduler.schedule, "schedule")
    engine.scheduler.update = timer.wrap(engine.scheduler.update, "scheduler update")
    engine.executor.sampler.sample = timer.wrap(engine.executor.sampler.sample, "sampling")
    engine.output_processor.process = timer.wrap(engine.output_processor.process, "output processing")
    steps = 0
    original_step = engine.step

    def counted_step() -> list[Any]:
        nonlocal steps
        steps += 1
        return original_step()

    engine.step = counted_step
    workload = build_w1(ordinary_token_ids(model_dir), quick=False)
    prompts = [request.prompt for request in workload.requests]
    params = SamplingParams(max_tokens=workload.requests[0].max_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompts, params)  # warm-up: the same shapes, untimed
    timer.seconds.clear()
    steps = 0
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    wall = time.perf_counter() - start
    seconds = dict(timer.seconds)
    inside_forward = seconds["prepare inputs"] + seconds["attention (paged)"] + seconds["LM head"]
    seconds["rest of forward (linears, norms, rotary)"] = seconds.pop("forward") - inside_forward
    seconds["engine loop, unaccounted"] = wall - sum(seconds.values())
    return seconds, wall, sum(len(output.token_ids) for output in outputs), steps


def _print_table(dtype: str, seconds: dict[str, float], wall: float, tokens: int, steps: int) -> None:
    print(f"\n{dtype}: {tokens} tokens in {wall:.2f} s = {tokens / wall:.0f} tok/s, {steps} steps")
    print(f"{'phase':<42}{'ms':>9}{'share':>8}{'ms/step':>9}")
    for phase in PHASES:
        value = seconds.get(phase, 0.0)
        print(f"{phase:<42}{value * 1000:>9.0f}{value / wall:>8.1%}{value * 1000 / steps:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes to profile")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the benchmark model lives")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = prepare_model(args.model_dir)
    for dtype in args.dtypes.split(","):
        _print_table(dtype, *profile_w1(model_dir, dtype))


if __name__ == "__main__":
    main()
