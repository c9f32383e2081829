"""How a model splits into tensor-parallel shards, checked from its config alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, Phi3Config

from engine.parallel.shard_loader import check_shardable, load_shard
from engine.parallel.tp_layers import ShardGroup


def test_shards_take_consecutive_equal_parts() -> None:
    parts = [ShardGroup(rank, 4).split(512, "vocabulary") for rank in range(4)]
    assert parts == [(0, 128), (128, 256), (256, 384), (384, 512)]


@pytest.mark.parametrize(
    ("heads", "kv_heads", "intermediate", "message"),
    [
        (6, 4, 128, r"attention heads \(6\)"),
        (4, 2, 128, r"key/value heads \(2\)"),
        (4, 4, 102, r"MLP width \(intermediate_size\) \(102\)"),
    ],
)
def test_a_model_the_shards_cannot_split_evenly_is_refused_naming_what(
    heads: int, kv_heads: int, intermediate: int, message: str
) -> None:
    config = LlamaConfig(
        hidden_size=48 if heads == 6 else 64,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
    )
    with pytest.raises(ValueError, match=rf"^tensor_parallel_size=4 must divide the model's {message}"):
        check_shardable(config, 4)
    check_shardable(config, 1)


def test_fused_projections_are_refused_before_any_weight_is_read(tmp_path: Path) -> None:
    # Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj: slicing them by rows would mix heads.
    Phi3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"^tensor-parallel shards support Llama-style decoder layers"):
        load_shard(str(tmp_path), torch.float32, torch.device("cpu"), ShardGroup(0, 2))


def test_a_model_directory_missing_on_the_shards_node_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "only-on-another-node"
    with pytest.raises(ValueError, match=r"does not exist on this shard's node: .* shared storage, or a hub id"):
        load_shard(str(missing), torch.float32, torch.device("cpu"), ShardGroup(0, 2))
