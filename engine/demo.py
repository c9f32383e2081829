"""Offline demo: writes the built-in demo model (no download) and streams a few requests.

    python -m engine.demo [--model-dir DIR] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from engine.tiny_models import DEMO_LLAMA, write_tiny_model

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "demo-llama"

PROMPTS = [
    "The fastest way to serve a language model is",
    "Paged attention splits the KV cache into",
    "Continuous batching means",
]


async def stream_all(engine: AsyncLLMEngine, params: SamplingParams) -> None:
    async def one(index: int, prompt: str) -> None:
        async for output in engine.generate(f"demo-{index}", prompt, params):
            if output.finished:
                ttft = (output.timing.first_token or 0.0) - output.timing.arrival
                print(f"[{index}] {prompt!r} -> {output.text!r} ({len(output.token_ids)} tokens, TTFT {ttft * 1000:.0f} ms)")

    await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS)))
    stats = await engine.stats()
    print(
        f"engine: {stats.num_generation_tokens} tokens generated, {stats.kv_blocks_total} KV blocks, "
        f"prefix-cache hits {stats.prefix_cache_hit_tokens}/{stats.prefix_cache_queried_tokens} tokens"
    )


async def main(model_dir: Path, max_tokens: int) -> None:
    write_tiny_model(model_dir, DEMO_LLAMA)
    engine = AsyncLLMEngine(EngineConfig(model=str(model_dir), max_model_len=1024, max_num_seqs=16))
    await engine.start(timeout_s=300)
    print(f"demo model loaded from {model_dir} in {engine.load_seconds:.1f}s (random weights: the text is noise)")
    try:
        await stream_all(engine, SamplingParams(max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=0))
    finally:
        await engine.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(args.model_dir, args.max_tokens))
