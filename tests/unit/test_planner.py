"""The memory planner on published models: parameter counts, weight bytes, GPUs needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from deployments.tools import cli, planner
from deployments.tools.planner import (
    KNOWN_MODELS,
    ModelDims,
    load_model_config,
    plan,
    shard_weight_bytes,
    stage_weight_bytes,
    weight_bytes,
)
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model
from engine.parallel.shard_loader import shard_on_meta
from engine.parallel.stages import pipeline_stages
from engine.parallel.tp_layers import ShardGroup

GB = 10**9


def dims(name: str) -> ModelDims:
    return ModelDims.from_config(load_model_config(name))


def plan_on(
    model: ModelDims,
    dtype: str,
    *,
    gpu_gb: int,
    context_len: int,
    concurrency: int,
    quantization: planner.Quantization | None = None,
    gpus_per_node: int = 8,
) -> planner.Plan:
    """On GPUs of `gpu_gb` with 90% of their memory for weights and KV."""
    return plan(
        model,
        dtype=dtype,
        quantization=quantization,
        gpu_memory_bytes=gpu_gb * GB,
        memory_fraction=0.9,
        context_len=context_len,
        concurrency=concurrency,
        gpus_per_node=gpus_per_node,
    )


# Parameter counts as the models' cards publish them.
@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("llama-2-7b", 6.74),
        ("llama-2-13b", 13.02),
        ("llama-2-70b", 68.98),
        ("llama-3.1-8b", 8.03),
        ("mistral-7b", 7.25),
        ("qwen2.5-7b", 7.62),
        ("qwen2.5-32b", 32.76),
    ],
)
def test_parameter_counts_match_the_published_sizes(name: str, billions: float) -> None:
    assert dims(name).num_parameters() / GB == pytest.approx(billions, abs=0.01)


def test_llama_2_70b_in_fp16_is_about_140_gb_and_needs_tensor_parallelism_on_80_gb_gpus() -> None:
    model = dims("llama-2-70b")
    assert 135 * GB < weight_bytes(model, "float16", None) < 142 * GB
    result = plan_on(model, "float16", gpu_gb=80, context_len=4096, concurrency=1)
    assert result.min_tensor_parallel_size is not None and result.min_tensor_parallel_size >= 2


def test_a_13b_model_in_4_bit_is_about_7_gb() -> None:
    assert 6.5 * GB < weight_bytes(dims("llama-2-13b"), "bfloat16", "nf4") < 8 * GB


def test_quantized_weights_shrink_against_bfloat16() -> None:
    model = dims("llama-2-13b")
    bf16 = weight_bytes(model, "bfloat16", None)
    assert weight_bytes(model, "bfloat16", "int8") / bf16 < 0.55
    assert weight_bytes(model, "bfloat16", "nf4") / bf16 < 0.32


def test_kv_per_token_is_keys_and_values_of_every_layer() -> None:
    model = dims("llama-2-70b")  # 80 layers x 8 KV heads x 128 dims x 2 bytes, keys and values
    result = plan_on(model, "float16", gpu_gb=80, context_len=4000, concurrency=1)
    assert result.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert result.kv_bytes_per_sequence == result.kv_bytes_per_token * 4000  # 250 whole blocks of 16


def test_the_chosen_size_serves_the_concurrency_on_the_fewest_gpus() -> None:
    result = plan_on(dims("llama-2-70b"), "float16", gpu_gb=80, context_len=4096, concurrency=64)
    assert result.sequences_per_replica * result.num_replicas >= 64
    assert result.tensor_parallel_size is not None and result.num_gpus <= result.min_tensor_parallel_size * 16


def test_quantized_weights_are_never_split_across_gpus() -> None:
    # nf4 70B weights (~36 GB) fit no 24 GB GPU whole, and bitsandbytes weights cannot be sharded.
    result = plan_on(dims("llama-2-70b"), "float16", gpu_gb=24, context_len=4096, concurrency=1, quantization="nf4")
    assert (result.min_tensor_parallel_size, result.tensor_parallel_size) == (None, None)
    assert plan_on(dims("llama-2-70b"), "float16", gpu_gb=24, context_len=4096, concurrency=1).tensor_parallel_size


def test_each_gpu_of_a_split_holds_its_share_of_the_weights() -> None:
    model = dims("llama-2-70b")
    result = plan_on(model, "float16", gpu_gb=80, context_len=4096, concurrency=64)
    tp = result.tensor_parallel_size
    assert tp is not None and tp > 1
    assert result.weight_bytes_per_gpu == shard_weight_bytes(model, "float16", tp)
    # Only the norms are on every GPU: the shards' bytes add up to the weights and a little more.
    assert result.weight_bytes / tp < result.weight_bytes_per_gpu < 1.001 * result.weight_bytes / tp


def test_a_model_too_big_for_any_split_says_so() -> None:
    # 276 GB of float32 weights: more than 1 GB on each of 8 x 16 GPUs (tensor x pipeline parallel).
    result = plan_on(dims("llama-2-70b"), "float32", gpu_gb=1, context_len=4096, concurrency=1)
    assert (result.min_tensor_parallel_size, result.tensor_parallel_size, result.num_gpus) == (None, None, 0)


@pytest.mark.parametrize("tied", [False, True])
def test_each_stages_bytes_are_those_of_the_engines_own_stage_split(tied: bool) -> None:
    config = load_model_config("qwen2.5-7b")
    config.tie_word_embeddings = tied
    model = ModelDims.from_config(config)
    stages = pipeline_stages(config, 3)
    for tp in (1, 2):
        engine_split = [
            sum(p.numel() for p in shard_on_meta(config, torch.float32, ShardGroup(0, tp), stage=stage)[0].parameters())
            * 2
            for stage in stages
        ]
        assert stage_weight_bytes(model, "bfloat16", tp, stages) == engine_split


def test_a_model_no_node_can_hold_is_split_into_stages_across_nodes() -> None:
    # 140 GB of float16 weights; four 24 GB GPUs a node hold 86 GB: tensor parallelism within a
    # node is not enough, so stages go on several nodes.
    result = plan_on(dims("llama-2-70b"), "float16", gpu_gb=24, context_len=4096, concurrency=1, gpus_per_node=4)
    assert result.min_tensor_parallel_size is None
    assert (result.tensor_parallel_size, result.pipeline_parallel_size, result.num_gpus) == (4, 2, 8)
    assert result.weight_bytes / 8 < result.weight_bytes_per_gpu < 1.01 * result.weight_bytes / 8  # a stage each
    assert result.weight_bytes_per_gpu + result.kv_bytes_per_gpu <= 0.9 * 24 * GB


def test_one_node_that_holds_the_model_gets_no_stages() -> None:
    result = plan_on(dims("llama-2-70b"), "float16", gpu_gb=80, context_len=4096, concurrency=1)
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (2, 1)


def test_plan_command_prints_the_stages_and_each_gpus_weights_and_kv(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-2-70b", "--dtype", "float16", "--gpu-memory-gib", "24", "--gpus-per-node", "4"]
    assert cli.main(argv + ["--context-len", "4096"]) == 0
    out = capsys.readouterr().out
    assert "pipeline_parallel_size:" in out and "placement_strategy: PACK" in out
    assert "weights per GPU" in out and "KV per GPU" in out


def test_config_json_path_gives_the_same_dims_as_the_built_in_name(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(KNOWN_MODELS["mistral-7b"]))
    assert ModelDims.from_config(load_model_config(str(path))) == dims("mistral-7b")


def test_unknown_model_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="llama-2-70b"):
        load_model_config("gpt-17")


def test_plan_command_prints_figures_and_a_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-2-70b", "--dtype", "float16", "--gpu-memory-gib", "80", "--context-len", "4096"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "137,953,296,384 bytes" in out and "min tensor-parallel size  2" in out
    assert "tensor_parallel_size: 2" in out and "max_model_len: 4096" in out


def test_render_says_when_nothing_fits() -> None:
    result = planner.Plan(10, 1, 1, None, None, 0, 0)
    assert "does not fit" in planner.render("m", result, dtype="float32", quantization=None, context_len=8)


def test_tied_embeddings_are_counted_once_as_the_loaded_model_holds_them(tmp_path: Path) -> None:
    spec = TinyModelSpec(tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_pretrained(write_tiny_model(tmp_path / "tied", spec))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    parameters = sum(parameter.numel() for parameter in model.parameters())  # shared ones once
    assert ModelDims.from_config(model.config).num_parameters() == parameters


def test_a_config_json_without_a_model_type_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="config.json names its model_type"):
        load_model_config(str(path))
