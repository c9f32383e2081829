"""Pipeline stages on Ray nodes, alone and as tensor-parallel groups: placement, equality with
Hugging Face under chunked prefill, prefix hits and preemption, batches in flight, and a killed
stage."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from deployments.tools.planner import ModelDims, load_model_config, shard_weight_bytes
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.parallel.stages import pipeline_stages
from tests.cluster.conftest import CPUS_PER_NODE
from tests.cluster.shard_faults import assert_a_killed_shard_ends_the_stream_and_fails_health
from tests.engine.hf_reference import hf_greedy

SHARED_PREFIX = [7, 8, 9, 10, 11, 12, 13, 14]  # two blocks of four: later requests hit them
PROMPTS = [SHARED_PREFIX + tail for tail in ([40, 41, 42], [50, 51], [60, 61, 62, 63], [70])]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=True)


def pipeline_config(model_dir: Path, **overrides: object) -> EngineConfig:
    # Eight-token steps chunk every prefill; 20 blocks of 4 tokens cannot hold the four requests'
    # 28 + 16 tokens each at once, so the scheduler preempts.
    settings: dict[str, object] = {
        "model": str(model_dir),
        "dtype": "float32",
        "block_size": 4,
        "num_kv_blocks": 20,
        "max_num_batched_tokens": 8,
        "pipeline_parallel_size": 2,
        "placement_strategy": "STRICT_SPREAD",
    }
    return EngineConfig(**(settings | overrides))


def assert_matches_hugging_face(model_dir: Path, outputs: list) -> None:
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        expected_tokens, expected_logprobs = hf_greedy(model_dir, prompt, GREEDY.max_tokens)
        assert output.token_ids == expected_tokens
        assert max(abs(a - b) for a, b in zip(output.logprobs, expected_logprobs)) < 1e-3


@pytest.fixture(scope="module")
def pipeline_engine(two_node_cluster: Cluster, layered_dir: Path) -> Iterator[LLMEngine]:
    engine = LLMEngine(pipeline_config(layered_dir))
    yield engine
    engine.close()


def test_each_stage_runs_on_its_own_node(pipeline_engine: LLMEngine) -> None:
    shards = pipeline_engine.shards()
    assert [(shard.stage, shard.rank) for shard in shards] == [(0, 0), (1, 0)]
    assert len({shard.node_id for shard in shards}) == 2


def test_two_stages_generate_what_hugging_face_generates_through_chunks_prefix_hits_and_preemption(
    pipeline_engine: LLMEngine, layered_dir: Path
) -> None:
    before = pipeline_engine.stats()
    outputs = pipeline_engine.generate(PROMPTS, GREEDY)
    after = pipeline_engine.stats()
    assert_matches_hugging_face(layered_dir, outputs)
    assert after.prefix_cache_hit_tokens > before.prefix_cache_hit_tokens
    assert after.num_preemptions > before.num_preemptions
    assert after.kv_blocks_used == 0


def test_two_batches_are_in_the_pipeline_at_once(pipeline_engine: LLMEngine) -> None:
    pipeline_engine.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    first, last = pipeline_engine.executor.stage_work()
    started_on_first = {work.batch_index: work.start for work in first}
    # The last stage runs batch i while the first stage already runs batch i + 1.
    overlapping = [
        work.batch_index
        for work in last
        if work.batch_index + 1 in started_on_first and started_on_first[work.batch_index + 1] < work.end
    ]
    assert len(overlapping) >= len(last) // 2, (first, last)


def test_each_stage_holds_its_share_of_the_weights_as_the_planner_predicts(
    pipeline_engine: LLMEngine, layered_dir: Path
) -> None:
    whole_model = LLMEngine(EngineConfig(model=str(layered_dir), dtype="float32", num_kv_blocks=4))
    whole = whole_model.shards()[0].weight_bytes
    whole_model.close()
    stage_bytes = [shard.weight_bytes for shard in pipeline_engine.shards()]
    assert sum(stage_bytes) == whole  # untied: every weight on exactly one stage
    assert max(stage_bytes) <= 0.6 * whole
    config = load_model_config(str(layered_dir))
    dims = ModelDims.from_config(config)
    assert stage_bytes == [shard_weight_bytes(dims, "float32", 1, stage) for stage in pipeline_stages(config, 2)]


@pytest.fixture
def four_nodes(two_node_cluster: Cluster) -> Iterator[Cluster]:
    """Two more nodes for the test, removed after it."""
    added = [two_node_cluster.add_node(num_cpus=CPUS_PER_NODE) for _ in range(2)]
    two_node_cluster.wait_for_nodes()
    yield two_node_cluster
    for node in added:
        two_node_cluster.remove_node(node)


def test_two_stages_of_two_tensor_parallel_shards_on_four_nodes_match_hugging_face(
    four_nodes: Cluster, layered_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.parallel.sharded_executor"):
        engine = LLMEngine(pipeline_config(layered_dir, tensor_parallel_size=2, cpus_per_shard=0.5))
    try:
        shards = engine.shards()
        assert [(shard.stage, shard.rank) for shard in shards] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert len({shard.node_id for shard in shards}) == 4
        # STRICT_SPREAD put each stage's two shards on two nodes, and the engine says so.
        messages = [record.getMessage() for record in caplog.records]
        spread = [message for message in messages if "all-reduces cross the network" in message]
        assert [message.split(" are on")[0] for message in spread] == [
            f"the 2 tensor-parallel shards of stage {stage}" for stage in (0, 1)
        ]
        assert_matches_hugging_face(layered_dir, engine.generate(PROMPTS, GREEDY))
    finally:
        engine.close()


def test_a_killed_stage_ends_the_request_in_flight_and_fails_health(two_node_cluster: Cluster, llama_dir: Path) -> None:
    # The first stage: the second is left without the hidden state it waits for.
    config = pipeline_config(llama_dir, block_size=16, num_kv_blocks=64, cpus_per_shard=0.5)
    assert_a_killed_shard_ends_the_stream_and_fails_health(config, victim=0)
