"""Tensor-parallel shards on two Ray nodes: placement, equality with Hugging Face, and faults."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from deployments.tools.planner import ModelDims, load_model_config, shard_weight_bytes
from engine import EngineConfig, LLMEngine, SamplingParams, StructuredOutput
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model
from engine.parallel.placement import shard_bundles
from engine.parallel.sharded_executor import spawn_shard
from engine.parallel.stages import pipeline_stages
from tests.cluster.shard_faults import assert_a_killed_shard_ends_the_stream_and_fails_health
from tests.engine.hf_reference import hf_greedy

PROMPTS = [[5, 6, 7, 8], [40, 41, 42, 43, 44, 45, 46], [300, 301]]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=True)


def spread_config(model_dir: Path) -> EngineConfig:
    return EngineConfig(
        model=str(model_dir),
        dtype="float32",
        num_kv_blocks=64,
        tensor_parallel_size=2,
        placement_strategy="STRICT_SPREAD",
    )


@pytest.fixture(scope="module")
def spread_engine(two_node_cluster: Cluster, layered_dir: Path) -> LLMEngine:
    engine = LLMEngine(spread_config(layered_dir))
    yield engine
    engine.close()


def test_strict_spread_puts_each_shard_on_its_own_node(spread_engine: LLMEngine) -> None:
    shards = spread_engine.shards()
    assert [shard.rank for shard in shards] == [0, 1]
    assert len({shard.node_id for shard in shards}) == 2
    assert {node["NodeID"] for node in ray.nodes() if node["Alive"]} == {shard.node_id for shard in shards}


def test_two_shards_generate_what_hugging_face_generates(spread_engine: LLMEngine, layered_dir: Path) -> None:
    outputs = spread_engine.generate(PROMPTS, GREEDY)  # batched together, on both nodes
    for prompt, output in zip(PROMPTS, outputs):
        expected_tokens, expected_logprobs = hf_greedy(layered_dir, prompt, GREEDY.max_tokens)
        assert output.token_ids == expected_tokens
        assert max(abs(a - b) for a, b in zip(output.logprobs, expected_logprobs)) < 1e-3


def test_grammar_masks_reach_the_sampling_shard(spread_engine: LLMEngine) -> None:
    """A structured-output request's bitmask travels with the batch to rank 0, which samples."""
    choices = ["alpha", "beta", "gamma"]
    params = [
        SamplingParams(max_tokens=20, temperature=1.0, seed=i, structured_output=StructuredOutput.choice(choices))
        for i in range(4)
    ]
    outputs = spread_engine.generate(["Pick:"] * 4, params)
    assert all(output.text in choices and output.finish_reason == "stop" for output in outputs)


def test_tied_embeddings_and_qkv_biases_split_and_match_hugging_face(
    two_node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Qwen2 has q/k/v biases; with tied embeddings the checkpoint stores no LM head of its own.
    spec = TinyModelSpec(architecture="qwen2", tie_word_embeddings=True)
    model_dir = write_tiny_model(tmp_path_factory.mktemp("tied-qwen2"), spec)
    engine = LLMEngine(spread_config(model_dir))
    try:
        for prompt, output in zip(PROMPTS, engine.generate(PROMPTS, GREEDY)):
            expected_tokens, expected_logprobs = hf_greedy(model_dir, prompt, GREEDY.max_tokens)
            assert output.token_ids == expected_tokens
            assert max(abs(a - b) for a, b in zip(output.logprobs, expected_logprobs)) < 1e-3
    finally:
        engine.close()


def test_each_shard_holds_at_most_sixty_percent_of_the_weights(spread_engine: LLMEngine, layered_dir: Path) -> None:
    whole = LLMEngine(EngineConfig(model=str(layered_dir), dtype="float32", num_kv_blocks=4)).shards()[0].weight_bytes
    shard_bytes = [shard.weight_bytes for shard in spread_engine.shards()]
    assert max(shard_bytes) <= 0.6 * whole
    assert sum(shard_bytes) >= whole  # every weight is held somewhere (norms are on both)
    dims = ModelDims.from_config(load_model_config(str(layered_dir)))
    assert shard_bytes == [shard_weight_bytes(dims, "float32", 2)] * 2  # what `switchyard plan` predicts


def test_a_killed_shard_ends_the_request_in_flight_and_fails_health(two_node_cluster: Cluster, llama_dir: Path) -> None:
    assert_a_killed_shard_ends_the_stream_and_fails_health(spread_config(llama_dir), victim=1)


def test_a_shard_answers_health_pings_while_a_long_call_blocks_it(two_node_cluster: Cluster, llama_dir: Path) -> None:
    # Rank 0's `load` blocks in torch.distributed's init, waiting for rank 1, which never loads: a
    # stand-in for a step longer than the health timeout. The ping must not queue behind it.
    config = spread_config(llama_dir)
    group = ray.util.placement_group(shard_bundles(config), strategy=config.placement_strategy)
    ray.get(group.ready(), timeout=120)
    stage = pipeline_stages(load_model_config(str(llama_dir)), 1)[0]
    shards = [spawn_shard(config, group, stage, rank) for rank in range(config.tensor_parallel_size)]
    try:
        host = ray.get(shards[0].node.remote(), timeout=120)[1]
        port = ray.get(shards[0].open_node_store.remote(), timeout=60)
        loading = shards[0].load.remote(host, port, 1)
        ready, _ = ray.wait([loading], timeout=3)
        assert not ready, "rank 0 loaded alone; the test needs a call that blocks"
        for _ in range(3):
            started = time.monotonic()
            ray.get(shards[0].ping.remote(), timeout=5)
            assert time.monotonic() - started < 5
        ready, _ = ray.wait([loading], timeout=0)
        assert not ready  # the ping really ran beside the blocked call
    finally:
        for shard in shards:
            ray.kill(shard, no_restart=True)
        ray.util.remove_placement_group(group)
