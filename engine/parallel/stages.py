"""How pipeline stages split a model: which decoder layers each stage holds. Torch- and Ray-free,
so the planner and the KubeRay pod sizing use the engine's own split without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PipelineStage", "pipeline_stages", "stage_layer_ranges"]


@dataclass(frozen=True)
class PipelineStage:
    """One stage's place in the pipeline and the decoder layers it holds."""

    index: int
    num_stages: int
    layers: range

    @property
    def is_first(self) -> bool:
        """The stage that embeds the tokens."""
        return self.index == 0

    @property
    def is_last(self) -> bool:
        """The stage with the final norm and the LM head: it computes logits and samples."""
        return self.index == self.num_stages - 1


def stage_layer_ranges(num_layers: int, num_stages: int) -> list[range]:
    """Consecutive layer ranges, one per stage, as even as possible. Leftover layers go to the
    first stages and never to the last, which also runs the final norm and the LM head."""
    if num_stages > num_layers:
        raise ValueError(
            f"pipeline_parallel_size={num_stages} must be <= the model's decoder layers ({num_layers}): a stage "
            "would hold none"
        )
    base, leftover = divmod(num_layers, num_stages)
    ranges: list[range] = []
    start = 0
    for index in range(num_stages):
        size = base + (1 if index < leftover else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def pipeline_stages(model_config: Any, num_stages: int) -> list[PipelineStage]:
    """The stages of a transformers config split `num_stages` ways."""
    num_layers = model_config.get_text_config().num_hidden_layers
    return [
        PipelineStage(index, num_stages, layers)
        for index, layers in enumerate(stage_layer_ranges(num_layers, num_stages))
    ]
