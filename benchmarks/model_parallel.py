"""Output tokens/s of one model whole (TP=1), in two tensor-parallel shards (TP=2) and in two
pipeline stages (PP=2) on a two-node Ray cluster; each shard's weight bytes, the pipeline's
bubble, and the bytes that cross between the nodes per step.

Both nodes are `ray.cluster_utils.Cluster` nodes on this machine, each with `--cpus-per-node`
CPUs. TP=1 runs the engine in a Ray actor on one node with that many CPUs and torch threads;
TP=2 and PP=2 place one shard per node (STRICT_SPREAD) with the same CPUs each, and the engine
(the scheduler) in this process. Every round runs the same batch (greedy, ignore_eos, exact
lengths) on the three, one after another; the table gives medians, and how many of each split's
tokens equal TP=1's.

The bubble is the share of a run's time a stage is not computing (from the stages' own record of
when they ran each batch). The bytes between the nodes per step are computed from the shapes
and the run's tokens per step, not measured: TP=2 all-reduces the (T, H) hidden state twice per
decoder layer and once after the embedding (each rank sends its half and receives the other's:
2 x T x H x dtype bytes cross per all-reduce) and gathers the sampling rows' half-vocabulary
logits to rank 0; PP=2 sends the (T, H) hidden state once from the first stage to the second.

    .venv/bin/python -m benchmarks.model_parallel [--repeats 3] [--prompts 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.cluster_utils import Cluster

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model
from engine.model.kv_cache import DTYPE_BYTES
from engine.parallel.shard_worker import StageWork

# Decoder layers dominate (about 100M parameters, 0.4 GB in float32), so the forward, not the
# per-step messaging, sets the pace, as it does for real models.
MODEL = TinyModelSpec(
    hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=8, intermediate_size=2816, vocab_size=4096
)
DTYPE = "float32"
REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("TP=1", "TP=2", "PP=2")


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


@dataclass
class Run:
    seconds: float
    tokens: list[list[int]]
    # The batches of the run (steps) and the tokens they computed, prompt and decode.
    steps: int = 0
    computed_tokens: int = 0
    # Per stage, the share of the run's time it was not computing (PP=2 only).
    bubble: tuple[float, ...] = ()


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
    # The head also hosts the TP=1 actor (the systems take turns, never run at once).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3 * args.cpus_per_node})
    cluster.add_node(num_cpus=2 * args.cpus_per_node)
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


def _sharded_run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> Run:
    before = engine.stats()
    started_at = time.time()
    started = time.perf_counter()
    tokens = [output.token_ids for output in engine.generate(prompts, params)]
    seconds = time.perf_counter() - started
    after = engine.stats()
    computed = (after.num_prompt_tokens_computed - before.num_prompt_tokens_computed) + (
        after.num_generation_tokens - before.num_generation_tokens
    )
    work = [[item for item in shard if item.start >= started_at] for shard in engine.executor.stage_work()]
    return Run(seconds, tokens, steps=len(work[0]), computed_tokens=computed, bubble=_bubble(work))


def _bubble(work: list[list[StageWork]]) -> tuple[float, ...]:
    """Per shard, the share of the span from the first stage's first start to the last stage's
    last end that it spent not computing."""
    start = min(item.start for item in work[0])
    end = max(item.end for item in work[-1])
    return tuple(1 - sum(item.end - item.start for item in shard) / (end - start) for shard in work)


def _run(model_dir: str, prompts: list[list[int]], params: SamplingParams, args: argparse.Namespace) -> None:
    common = {"model": model_dir, "dtype": DTYPE, "num_kv_blocks": 512, "max_num_seqs": args.prompts}
    spread = {"placement_strategy": "STRICT_SPREAD", "cpus_per_shard": args.cpus_per_node}
    whole = WholeModel.options(num_cpus=args.cpus_per_node).remote(EngineConfig(**common), threads=args.cpus_per_node)
    sharded = {
        "TP=2": LLMEngine(EngineConfig(**common, **spread, tensor_parallel_size=2)),
        "PP=2": LLMEngine(EngineConfig(**common, **spread, pipeline_parallel_size=2)),
    }
    runs: dict[str, list[Run]] = {name: [] for name in SYSTEMS}
    for _ in range(args.repeats):
        elapsed, tokens = ray.get(whole.generate.remote(prompts, params))
        runs["TP=1"].append(Run(elapsed, tokens))
        for name, engine in sharded.items():
            runs[name].append(_sharded_run(engine, prompts, params))
    largest = {"TP=1": ray.get(whole.weight_bytes.remote())}
    shard_bytes = {}
    for name, engine in sharded.items():
        shard_bytes[name] = [shard.weight_bytes for shard in engine.shards()]
        largest[name] = max(shard_bytes[name])
        assert len({shard.node_id for shard in engine.shards()}) == 2, f"{name}'s shards share a node"
        engine.close()
    _report(runs, largest, shard_bytes, prompts, params, args)


def _report(
    runs: dict[str, list[Run]],
    largest: dict[str, int],
    shard_bytes: dict[str, list[int]],
    prompts: list[list[int]],
    params: SamplingParams,
    args: argparse.Namespace,
) -> None:
    num_tokens = len(prompts) * params.max_tokens
    rate = {name: num_tokens / statistics.median(run.seconds for run in runs[name]) for name in SYSTEMS}
    reference = runs["TP=1"][-1].tokens
    print(
        f"\nmodel: hidden {MODEL.hidden_size}, {MODEL.num_layers} layers, vocab {MODEL.vocab_size}, {DTYPE}; "
        f"{len(prompts)} prompts x {params.max_tokens} tokens ({num_tokens}), greedy; "
        f"{args.cpus_per_node} CPU(s) and torch thread(s) per node; medians of {args.repeats}; TP=2 and PP=2 "
        "with one shard on each node"
    )
    print("| system | shard weight bytes | tok/s | vs TP=1 | runs (s) | tokens equal to TP=1's |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in SYSTEMS:
        last = runs[name][-1].tokens
        same = sum(a == b for x, y in zip(reference, last) for a, b in zip(x, y)) / num_tokens
        held = " / ".join(f"{value:,}" for value in shard_bytes.get(name, [largest[name]]))
        seconds = " ".join(f"{run.seconds:.2f}" for run in runs[name])
        print(f"| {name} | {held} | {rate[name]:.1f} | {rate[name] / rate['TP=1']:.2f}x | {seconds} | {same:.1%} |")
    dtype_bytes = DTYPE_BYTES[DTYPE]
    hidden = MODEL.hidden_size
    print("\n| system | steps | tokens per step | bytes between the nodes per step | pipeline bubble per stage |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("TP=2", "PP=2"):
        run = runs[name][-1]
        per_step = run.computed_tokens / run.steps
        rows_per_step = len(prompts) * params.max_tokens / run.steps  # sampling rows
        if name == "TP=2":
            all_reduces = 2 * MODEL.num_layers + 1
            all_reduced = all_reduces * 2 * per_step * hidden * dtype_bytes
            crossing = all_reduced + rows_per_step * MODEL.vocab_size / 2 * dtype_bytes
            bubble = "-"
        else:
            crossing = per_step * hidden * dtype_bytes
            bubble = " / ".join(
                f"{statistics.median(each.bubble[stage] for each in runs[name]):.0%}" for stage in range(2)
            )
        print(f"| {name} | {run.steps} | {per_step:.1f} | {crossing:,.0f} | {bubble} |")


if __name__ == "__main__":
    main()
