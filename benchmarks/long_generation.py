"""Per-token time over long generations: does the engine's cost per step grow with output length?

A batch of `--batch` requests, each sampling 2,048 tokens (temperature 1, EOS ignored) from a
short prompt on the benchmark Llama (`BENCHMARK_LLAMA`, float32, CPU). The table gives the median
step time (one token per request per step) over the first and the last 256 steps, their ratio,
and output tokens/s over the whole run; the median of `--repeats` runs.

Only the engine's public API is used, so the same script times another checkout of the engine:

    .venv/bin/python benchmarks/long_generation.py
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/long_generation.py --model-dir ...
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from engine import EngineConfig, LLMEngine, SamplingParams

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"
NUM_TOKENS = 2048
WINDOW = 256


def time_steps(model_dir: Path, batch: int) -> tuple[list[float], float]:
    """Seconds of every step of one run, and output tokens/s over it."""
    engine = LLMEngine(EngineConfig(model=str(model_dir), max_num_seqs=batch, num_kv_blocks=batch * 136))
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=1.0, ignore_eos=True)
    for index in range(batch):
        engine.add_request(f"r{index}", [1 + index, 2, 3, 4, 5, 6, 7, 8], params)
    step_s: list[float] = []
    num_tokens = 0
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        step_started = time.perf_counter()
        outputs = engine.step()
        step_s.append(time.perf_counter() - step_started)
        num_tokens += sum(len(output.new_token_ids) for output in outputs)
    return step_s, num_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="the benchmark model's directory")
    parser.add_argument("--batch", type=int, default=8, help="requests generating at once")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--label", default="this checkout", help="the row's name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.model_dir.is_dir():
        from engine.demo.tiny_models import BENCHMARK_LLAMA, write_tiny_model

        write_tiny_model(args.model_dir, BENCHMARK_LLAMA)
    firsts, lasts, rates = [], [], []
    for _ in range(args.repeats):
        step_s, tokens_per_s = time_steps(args.model_dir, args.batch)
        # The first step is the prefill; windows are of decode steps.
        firsts.append(statistics.median(step_s[1 : 1 + WINDOW]) * 1000)
        lasts.append(statistics.median(step_s[-WINDOW:]) * 1000)
        rates.append(tokens_per_s)
    first, last = statistics.median(firsts), statistics.median(lasts)
    rate = statistics.median(rates)
    header = f"{'engine':<16} {'batch':>5} {'step ms, 1-256':>15} {'step ms, 1793-2048':>19} {'last/first':>10}"
    print(f"{header} {'tok/s':>7}")
    print(f"{args.label:<16} {args.batch:>5} {first:>15.2f} {last:>19.2f} {last / first:>10.2f} {rate:>7.0f}")


if __name__ == "__main__":
    main()
