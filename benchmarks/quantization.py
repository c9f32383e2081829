"""Weight bytes, speed and greedy agreement of one model at fp32, bf16, int8 and nf4 on this machine.

Every variant runs the same batch through `LLMEngine.generate` (greedy, ignore_eos, exact
lengths); agreement is the share of generated tokens equal to fp32's at the same position, and
the mean position of the first token that differs.

    .venv/bin/python -m benchmarks.quantization [--repeats 3] [--prompts 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model

# Decoder layers dominate its weights, as in real models (the embeddings are a small share).
MODEL = TinyModelSpec(
    hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408, vocab_size=4096
)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "fp32": ("float32", None),
    "bf16": ("bfloat16", None),
    "int8": ("bfloat16", "int8"),
    "nf4": ("bfloat16", "nf4"),
}


@dataclass
class Row:
    name: str
    weight_bytes: int
    tokens_per_s: float
    same_tokens: float
    first_difference: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(0)
    prompts = [[rng.randrange(5, MODEL.vocab_size) for _ in range(rng.randrange(16, 64))] for _ in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    with tempfile.TemporaryDirectory() as directory:
        model_dir = write_tiny_model(Path(directory) / "model", MODEL)
        engines = {
            name: LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, quantization=quantization))
            for name, (dtype, quantization) in VARIANTS.items()
        }
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        tokens: dict[str, list[list[int]]] = {}
        for _ in range(args.repeats):
            for name, engine in engines.items():  # round-robin: a slow spell hits every variant
                started = time.perf_counter()
                outputs = engine.generate(prompts, params)
                seconds[name].append(time.perf_counter() - started)
                tokens[name] = [output.token_ids for output in outputs]
    num_tokens = args.prompts * args.max_tokens
    rows = [
        Row(
            name,
            engines[name].shards()[0].weight_bytes,
            num_tokens / statistics.median(seconds[name]),
            *_agreement(tokens[name], tokens["fp32"]),
        )
        for name in engines
    ]
    _print(rows, args, num_tokens)


def _agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[float, float]:
    same = sum(a == b for row, ref in zip(tokens, reference) for a, b in zip(row, ref))
    total = sum(len(ref) for ref in reference)
    firsts = [
        next((i for i, (a, b) in enumerate(zip(row, ref)) if a != b), len(ref)) for row, ref in zip(tokens, reference)
    ]
    return same / total, statistics.mean(firsts)


def _print(rows: list[Row], args: argparse.Namespace, num_tokens: int) -> None:
    fp32, bf16 = rows[0], rows[1]
    print(
        f"\nmodel: hidden {MODEL.hidden_size}, {MODEL.num_layers} layers, vocab {MODEL.vocab_size}; "
        f"{args.prompts} prompts x {args.max_tokens} tokens ({num_tokens}), greedy; "
        f"2 torch threads; tok/s medians of {args.repeats}"
    )
    print(f"{'variant':<8}{'weight bytes':>14}{'vs bf16':>9}{'tok/s':>9}{'vs fp32':>9}{'same tok':>10}{'1st diff':>10}")
    for row in rows:
        print(
            f"{row.name:<8}{row.weight_bytes:>14,}{row.weight_bytes / bf16.weight_bytes:>9.3f}"
            f"{row.tokens_per_s:>9.1f}{row.tokens_per_s / fp32.tokens_per_s:>9.2f}"
            f"{row.same_tokens:>10.1%}{row.first_difference:>10.1f}"
        )


if __name__ == "__main__":
    main()
