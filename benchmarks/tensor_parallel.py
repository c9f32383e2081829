"""Output tokens/s of one model whole (TP=1) and split in two shards (TP=2) on a two-node Ray cluster.

Both nodes are `ray.cluster_utils.Cluster` nodes on this machine, each with `--cpus-per-node`
CPUs. TP=1 runs the engine in a Ray actor on one node with that many CPUs and torch threads;
TP=2 places one shard per node (STRICT_SPREAD) with the same CPUs each, and the engine (the
scheduler) in this process. Every round runs the same batch (greedy, ignore_eos, exact lengths)
on both, alternating; the table gives medians, and how many of TP=2's tokens equal TP=1's.

    .venv/bin/python -m benchmarks.tensor_parallel [--repeats 3] [--prompts 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model

# Decoder layers dominate (about 100M parameters, 0.4 GB in float32), so the forward, not the
# per-step messaging, sets the pace, as it does for real models.
MODEL = TinyModelSpec(
    hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=8, intermediate_size=2816, vocab_size=4096
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@ray.remote
class WholeModel:
    """TP=1: the engine and its model in one actor, with the CPUs of one node."""

    def __init__(self, config: EngineConfig, threads: int) -> None:
        torch.set_num_threads(threads)
        self.engine = LLMEngine(config)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list[list[int]]]:
        started = time.perf_counter()
        outputs = self.engine.generate(prompts, params)
        return time.perf_counter() - started, [output.token_ids for output in outputs]

    def weight_bytes(self) -> int:
        return self.engine.shards()[0].weight_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(0)
    prompts = [[rng.randrange(5, MODEL.vocab_size) for _ in range(rng.randrange(16, 64))] for _ in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    # The head also hosts the TP=1 actor (the two systems take turns, never run at once).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2 * args.cpus_per_node})
    cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    pythonpath = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        with tempfile.TemporaryDirectory() as directory:
            model_dir = str(write_tiny_model(Path(directory) / "model", MODEL))
            _run(model_dir, prompts, params, args)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(model_dir: str, prompts: list[list[int]], params: SamplingParams, args: argparse.Namespace) -> None:
    common = {"model": model_dir, "num_kv_blocks": 512, "max_num_seqs": args.prompts}
    whole = WholeModel.options(num_cpus=args.cpus_per_node).remote(EngineConfig(**common), threads=args.cpus_per_node)
    split = LLMEngine(
        EngineConfig(
            **common,
            tensor_parallel_size=2,
            placement_strategy="STRICT_SPREAD",
            cpus_per_shard=args.cpus_per_node,
        )
    )
    seconds: dict[str, list[float]] = {"TP=1": [], "TP=2": []}
    whole_tokens: list[list[int]] = []
    split_tokens: list[list[int]] = []
    for _ in range(args.repeats):
        elapsed, whole_tokens = ray.get(whole.generate.remote(prompts, params))
        seconds["TP=1"].append(elapsed)
        started = time.perf_counter()
        split_tokens = [output.token_ids for output in split.generate(prompts, params)]
        seconds["TP=2"].append(time.perf_counter() - started)
    shard_bytes = [shard.weight_bytes for shard in split.shards()]
    nodes = {shard.node_id for shard in split.shards()}
    split.close()
    num_tokens = len(prompts) * params.max_tokens
    same = sum(a == b for x, y in zip(whole_tokens, split_tokens) for a, b in zip(x, y)) / num_tokens
    whole_bytes = ray.get(whole.weight_bytes.remote())
    rate = {name: num_tokens / statistics.median(times) for name, times in seconds.items()}

    print(
        f"\nmodel: hidden {MODEL.hidden_size}, {MODEL.num_layers} layers, vocab {MODEL.vocab_size}, float32; "
        f"{len(prompts)} prompts x {params.max_tokens} tokens ({num_tokens}), greedy; "
        f"{args.cpus_per_node} CPU(s) and torch thread(s) per node; medians of {args.repeats}"
    )
    print(f"TP=2 shards on {len(nodes)} distinct nodes")
    print(f"{'system':<8}{'largest shard bytes':>21}{'tok/s':>9}{'runs (s)':>24}")
    for name, largest in (("TP=1", whole_bytes), ("TP=2", max(shard_bytes))):
        runs = " ".join(f"{value:.2f}" for value in seconds[name])
        print(f"{name:<8}{largest:>21,}{rate[name]:>9.1f}{runs:>24}")
    print(f"TP=2 / TP=1 tok/s: {rate['TP=2'] / rate['TP=1']:.2f}x")
    print(f"largest shard / whole model weight bytes: {max(shard_bytes) / whole_bytes:.3f}")
    print(f"TP=2 tokens equal to TP=1's: {same:.1%}")


if __name__ == "__main__":
    main()
