"""EngineConfig and SamplingParams reject invalid values with a ValueError naming the field."""

from __future__ import annotations

import re

import pytest

from engine.config import EngineConfig
from engine.sampling_params import SamplingParams


def field_message(field: str) -> str:
    """A pattern for an error message that starts with the field's name."""
    return rf"^{re.escape(field)}\b"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", ""),
        ("block_size", 12),
        ("block_size", 0),
        ("num_kv_blocks", 0),
        ("kv_cache_memory_fraction", 0.0),
        ("kv_cache_memory_fraction", 1.5),
        ("max_num_seqs", 0),
        ("max_num_batched_tokens", 0),
        ("max_model_len", 1),
        ("scheduling", "fifo"),
        ("dtype", "int4"),
        ("device", "tpu"),
        ("quantization", "int3"),
        ("tensor_parallel_size", 0),
        ("tensor_parallel_size", 1.5),
        ("pipeline_parallel_size", 0),
        ("pipeline_parallel_size", True),
        ("placement_strategy", "RANDOM"),
        ("cpus_per_shard", 0),
    ],
)
def test_invalid_engine_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field_message(field)):
        EngineConfig(**{"model": "unused", field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("temperature", -1.0),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("stop", [""]),
        ("stop", ""),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", [True]),
        ("presence_penalty", 2.01),
        ("presence_penalty", -2.5),
        ("presence_penalty", float("nan")),
        ("presence_penalty", True),
        ("frequency_penalty", float("inf")),
        ("frequency_penalty", -3.0),
        ("frequency_penalty", "1"),
        ("top_logprobs", 21),
        ("top_logprobs", -1),
        ("top_logprobs", 1.5),
        ("top_logprobs", True),
        ("top_logprobs", 3),  # without logprobs=True
    ],
)
def test_invalid_sampling_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field_message(field)):
        SamplingParams(**{field: value})


def test_defaults_are_valid() -> None:
    config = EngineConfig(model="unused")
    params = SamplingParams()
    assert (config.block_size, config.scheduling, config.tensor_parallel_size) == (16, "continuous", 1)
    assert (params.max_tokens, params.temperature, params.stop, params.stop_token_ids) == (16, 1.0, [], [])


@pytest.mark.parametrize(
    "overrides",
    [
        {"block_size": 1},
        {"block_size": 32},
        {"num_kv_blocks": 1},
        {"kv_cache_memory_fraction": 1.0},
        {"max_model_len": 2},
        {"scheduling": "static"},
        {"scheduling": "request"},
        {"dtype": "bfloat16"},
        {"device": "cuda"},
        {"device": "cuda:1"},
        {"quantization": None},
    ],
)
def test_boundary_engine_config_values_are_accepted(overrides: dict[str, object]) -> None:
    config = EngineConfig(model="unused", **overrides)
    assert all(getattr(config, field) == value for field, value in overrides.items())


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_tokens": 1},
        {"temperature": 0.0},
        {"top_p": 1.0},
        {"top_k": 0},
        {"stop_token_ids": [0]},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"presence_penalty": 2, "frequency_penalty": -2},
        {"top_logprobs": 20, "logprobs": True},
        {"top_logprobs": 0, "logprobs": True},
    ],
)
def test_boundary_sampling_params_are_accepted(overrides: dict[str, object]) -> None:
    params = SamplingParams(**overrides)
    assert all(getattr(params, field) == value for field, value in overrides.items())


def test_top_logprobs_above_zero_names_the_missing_logprobs_flag() -> None:
    with pytest.raises(ValueError, match=r"^top_logprobs .*logprobs=True"):
        SamplingParams(top_logprobs=1)


def test_a_single_stop_string_becomes_a_list() -> None:
    assert SamplingParams(stop="###").stop == ["###"]


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantization_is_accepted_alone_and_refused_with_tensor_parallel_shards(quantization: str) -> None:
    assert EngineConfig(model="unused", quantization=quantization).quantization == quantization
    with pytest.raises(ValueError, match=r"^quantization .* cannot be combined with tensor_parallel_size=2"):
        EngineConfig(model="unused", quantization=quantization, tensor_parallel_size=2)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantization_is_refused_with_pipeline_stages(quantization: str) -> None:
    with pytest.raises(ValueError, match=r"^quantization .* cannot be combined with pipeline_parallel_size=2"):
        EngineConfig(model="unused", quantization=quantization, pipeline_parallel_size=2)


@pytest.mark.parametrize("scheduling", ["static", "request"])
def test_pipeline_stages_need_continuous_scheduling(scheduling: str) -> None:
    with pytest.raises(ValueError, match=r"^scheduling must be 'continuous' with pipeline_parallel_size > 1"):
        EngineConfig(model="unused", scheduling=scheduling, pipeline_parallel_size=2)


def test_a_model_runs_in_one_shard_per_stage_and_tensor_parallel_rank() -> None:
    config = EngineConfig(model="unused", tensor_parallel_size=2, pipeline_parallel_size=3)
    assert config.num_shards == 6
    assert EngineConfig(model="unused").num_shards == 1


def test_tensor_parallel_shards_take_their_gpu_from_ray_not_a_device_index() -> None:
    assert EngineConfig(model="unused", device="cuda", tensor_parallel_size=2).tensor_parallel_size == 2
    with pytest.raises(ValueError, match=r"^device must be 'cuda' or 'cpu' with tensor_parallel_size > 1"):
        EngineConfig(model="unused", device="cuda:1", tensor_parallel_size=2)
