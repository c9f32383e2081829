"""Prompt scoring (an evaluation harness's `echo` + `logprobs` + `max_tokens: 0`): the engine's
prompt logprobs against Hugging Face's batched forward on the same weights, side by side.

Every system scores the same prompts (random ordinary token ids, fixed seed) on the benchmark Llama,
each prompt token's logprob given those before it:

    engine        LLMEngine.generate(prompts, SamplingParams(max_tokens=0, prompt_logprobs=0)):
                  continuous batching, the prompts packed into steps of max_num_batched_tokens
    hf-batched    the model's forward on right-padded batches of --batch-size (attention mask),
                  log-softmax at every position, gathered at the next token

The table shows prompts scored per second (medians of --repeats runs, systems taking turns) and
checks that the two agree on every logprob.

    .venv/bin/python benchmarks/prompt_scoring.py
    .venv/bin/python benchmarks/prompt_scoring.py --num-prompts 32 --repeats 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hf_runners import load_hf_model  # noqa: E402
from benchmarks.workloads import ordinary_token_ids, prepare_model  # noqa: E402
from engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from engine.hardware import auto_dtype  # noqa: E402

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"


def engine_scores(engine: LLMEngine, prompts: list[list[int]]) -> list[list[float]]:
    outputs = engine.generate(prompts, SamplingParams(max_tokens=0, prompt_logprobs=0))
    return [[entry[0] for entry in output.prompt_logprobs[1:]] for output in outputs]  # type: ignore[index, union-attr]


@torch.inference_mode()
def hf_scores(model: torch.nn.Module, prompts: list[list[int]], batch_size: int) -> list[list[float]]:
    scores: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(prompt) for prompt in batch)
        input_ids = torch.tensor([prompt + [0] * (width - len(prompt)) for prompt in batch])  # (B, P) right-padded
        mask = torch.tensor([[1] * len(prompt) + [0] * (width - len(prompt)) for prompt in batch])  # (B, P)
        logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
        targets = input_ids[:, 1:, None]  # (B, P - 1, 1): each position scores the next token
        gathered = logprobs[:, :-1].gather(-1, targets).squeeze(-1)  # (B, P - 1)
        scores.extend(gathered[row, : len(prompt) - 1].tolist() for row, prompt in enumerate(batch))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="hf-batched's batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="float32 (the agreement check's tolerance assumes it)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = auto_dtype("cpu") if args.dtype == "auto" else args.dtype
    model_dir = prepare_model(args.model_dir)
    vocabulary = ordinary_token_ids(model_dir)
    rng = random.Random(0)
    prompts = [
        [rng.choice(vocabulary) for _ in range(rng.randint(args.min_len, args.max_len))]
        for _ in range(args.num_prompts)
    ]
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=2048, max_num_seqs=32))
    model = load_hf_model(model_dir, dtype)
    engine_scores(engine, prompts[:4])  # warm-ups
    hf_scores(model, prompts[:4], args.batch_size)
    seconds: dict[str, list[float]] = {"engine": [], "hf-batched": []}
    results: dict[str, list[list[float]]] = {}
    for _ in range(args.repeats):
        for system in seconds:
            start = time.perf_counter()
            if system == "engine":
                results[system] = engine_scores(engine, prompts)
            else:
                results[system] = hf_scores(model, prompts, args.batch_size)
            seconds[system].append(time.perf_counter() - start)
    worst = max(
        abs(a - b) for ours, theirs in zip(results["engine"], results["hf-batched"]) for a, b in zip(ours, theirs)
    )
    num_tokens = sum(len(prompt) for prompt in prompts)
    print(f"{args.num_prompts} prompts of {args.min_len}-{args.max_len} tokens ({num_tokens} in all), {dtype}, "
          f"{args.threads} threads, medians of {args.repeats}")  # fmt: skip
    print(f"{'system':<12} {'wall s':>8} {'prompts/s':>10} {'tokens/s':>10}")
    for system, runs in seconds.items():
        median = statistics.median(runs)
        print(f"{system:<12} {median:>8.2f} {args.num_prompts / median:>10.1f} {num_tokens / median:>10.0f}")
    ratio = statistics.median(seconds["hf-batched"]) / statistics.median(seconds["engine"])
    print(f"engine / hf-batched, prompts/s: {ratio:.2f}x; largest logprob difference {worst:.2e}")


if __name__ == "__main__":
    main()
