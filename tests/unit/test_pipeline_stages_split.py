"""How pipeline stages split a model's decoder layers."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from engine.parallel.shard_loader import shard_on_meta
from engine.parallel.stages import pipeline_stages, stage_layer_ranges
from engine.parallel.tp_layers import ShardGroup


@pytest.mark.parametrize(
    ("num_layers", "num_stages", "expected"),
    [
        (8, 2, [range(0, 4), range(4, 8)]),
        (8, 3, [range(0, 3), range(3, 6), range(6, 8)]),  # leftovers on the first stages, not the last
        (5, 4, [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]),
        (3, 3, [range(0, 1), range(1, 2), range(2, 3)]),
        (4, 1, [range(0, 4)]),
    ],
)
def test_stages_take_consecutive_layers_as_evenly_as_they_can(
    num_layers: int, num_stages: int, expected: list[range]
) -> None:
    assert stage_layer_ranges(num_layers, num_stages) == expected


def test_more_stages_than_layers_is_refused_naming_the_field() -> None:
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"^pipeline_parallel_size=3 must be <= the model's decoder layers \(2\)"):
        pipeline_stages(config, 3)


def test_only_the_ends_embed_and_sample() -> None:
    config = LlamaConfig(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    stages = pipeline_stages(config, 3)
    assert [(stage.is_first, stage.is_last) for stage in stages] == [(True, False), (False, False), (False, True)]
    assert [stage.layers for stage in stages] == [range(0, 2), range(2, 4), range(4, 6)]


def test_a_model_without_llama_style_layers_is_refused_naming_the_field() -> None:
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128)
    first = pipeline_stages(config, 2)[0]
    with pytest.raises(ValueError, match=r"^pipeline_parallel_size=2 needs a Llama-family decoder.*GPT2LMHeadModel"):
        shard_on_meta(config, torch.float32, ShardGroup(rank=0, world_size=1), stage=first)
