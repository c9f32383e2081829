"""How pipeline stages split a model's decoder layers."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from engine.parallel.stages import check_stageable, pipeline_stages, stage_layer_ranges


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
        check_stageable(config, 3)


def test_only_the_ends_embed_and_sample() -> None:
    config = LlamaConfig(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    stages = pipeline_stages(config, 3)
    assert [(stage.is_first, stage.is_last) for stage in stages] == [(True, False), (False, False), (False, True)]
    assert [stage.layers for stage in stages] == [range(0, 2), range(2, 4), range(4, 6)]
