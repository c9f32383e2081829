"""The engine without Serve: a batch of prompts through `LLMEngine`, then a few streams through `AsyncLLMEngine`.

Run from the repository root:

    .venv/bin/python examples/offline_batch.py                       # the built-in demo model
    .venv/bin/python examples/offline_batch.py --model /models/qwen  # any HF model directory or hub id
    .venv/bin/python examples/offline_batch.py --metrics-port 9400   # engine metrics on :9400/metrics

Without `--model` it writes the demo model (a tiny random-weight Llama, so the text is gibberish)
to ~/.cache/switchyard/demo-llama on first use; nothing is downloaded. With `--metrics-port` the
engine records its metrics (`switchyard_*`, the same definitions Serve exports through Ray) with
plain prometheus_client and serves them on that port; it then waits for Enter before exiting, so
they can be scraped.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import prometheus_client

from engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from engine.demo.tiny_models import DEMO_LLAMA, write_tiny_model
from engine.metrics import EngineMetrics, PrometheusBackend, StatsCallback

DEMO_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "demo-llama"

# The batch shares a prefix longer than a KV block, so prompts after the first reuse its cached blocks.
SHARED_PREFIX = "You are a terse assistant. Answer in one sentence, without preamble or caveats. Question: "
QUESTIONS = [
    "What is a KV cache?",
    "Why batch requests together?",
    "What does paged attention page?",
    "When is a sequence preempted?",
    "What is chunked prefill?",
    "Why cache prompt prefixes?",
    "What limits the batch size?",
    "What is time to first token?",
]
STREAMED_PROMPTS = [
    "The fastest way to serve a language model is",
    "Paged attention splits the KV cache into",
    "Continuous batching means",
]


def run_batch(engine: LLMEngine, max_tokens: int) -> None:
    """All prompts at once, greedy; `generate` returns the finished outputs in prompt order."""
    prompts = [SHARED_PREFIX + question for question in QUESTIONS]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    for question, output in zip(QUESTIONS, outputs, strict=True):
        print(f"  {question!r} -> {output.text[:60]!r}... ({len(output.token_ids)} tokens, {output.finish_reason})")
    num_tokens = sum(len(output.token_ids) for output in outputs)
    stats = engine.stats()
    print(
        f"batch: {len(prompts)} prompts, {num_tokens} tokens in {seconds:.2f}s ({num_tokens / seconds:.0f} tokens/s); "
        f"prefix cache hit {stats.prefix_cache_hit_tokens} of {stats.prefix_cache_queried_tokens} prompt tokens"
    )


async def run_streams(engine: AsyncLLMEngine, max_tokens: int) -> None:
    """Concurrent streams: each `generate` yields one delta per engine step until the request finishes."""

    async def one(index: int, prompt: str) -> None:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=index)
        num_deltas = 0
        async for output in engine.generate(f"stream-{index}", prompt, params):
            num_deltas += 1
            if output.finished:
                timing = output.timing
                ttft_ms = ((timing.first_token or timing.arrival) - timing.arrival) * 1000
                print(f"  [{index}] {prompt!r} -> {output.text!r}")
                print(f"      {len(output.token_ids)} tokens, {num_deltas} deltas, first token after {ttft_ms:.0f} ms")

    await asyncio.gather(*(one(index, prompt) for index, prompt in enumerate(STREAMED_PROMPTS)))


async def main(model: str, device: str, max_tokens: int, metrics_port: int | None) -> None:
    on_stats: StatsCallback | None = None
    if metrics_port is not None:
        on_stats = EngineMetrics(PrometheusBackend(), model=Path(model).name).record
        prometheus_client.start_http_server(metrics_port, addr="127.0.0.1")
        print(f"engine metrics at http://127.0.0.1:{metrics_port}/metrics")
    started = time.perf_counter()
    config = EngineConfig(model=model, device=device, max_model_len=1024, max_num_seqs=16)
    engine = LLMEngine(config, on_stats=on_stats)
    print(f"loaded {model} in {time.perf_counter() - started:.1f}s ({engine.stats().kv_blocks_total} KV blocks)")

    print("LLMEngine.generate, one batch:")
    run_batch(engine, max_tokens)

    # The same loaded engine, now driven by a background step loop.
    async_engine = AsyncLLMEngine.from_engine(engine)
    await async_engine.start()
    try:
        print("AsyncLLMEngine.generate, streams in flight together:")
        await run_streams(async_engine, max_tokens)
    finally:
        await async_engine.shutdown()
    if metrics_port is not None:
        await asyncio.to_thread(input, "press Enter to exit (the metrics stay up until then) ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"HF model directory or hub id (default: the demo model in {DEMO_MODEL_DIR})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens to generate per prompt (default: 32)")
    parser.add_argument("--metrics-port", type=int, help="serve the engine's Prometheus metrics on this port")
    args = parser.parse_args()
    model = args.model or str(write_tiny_model(DEMO_MODEL_DIR, DEMO_LLAMA))
    asyncio.run(main(model, args.device, args.max_tokens, args.metrics_port))
