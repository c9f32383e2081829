"""Pipeline stages in one process: each stage's runner holds only its layers (and the ends their
embedding or LM head), and the stages chained compute the whole model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from engine import EngineConfig, SamplingParams
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model
from engine.model.model_runner import ModelRunner
from engine.parallel.stages import PipelineStage, pipeline_stages
from engine.step_data import ScheduledChunk, SchedulerOutput

GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


def chunk(request_id: str, token_ids: list[int], start: int, block_ids: list[int]) -> ScheduledChunk:
    return ScheduledChunk(request_id, token_ids, start, block_ids, GREEDY, seed=0, num_output_tokens=0)


def runner(model_dir: Path, stage: PipelineStage | None = None) -> ModelRunner:
    model_runner = ModelRunner(EngineConfig(model=str(model_dir), dtype="float32", block_size=4), stage=stage)
    model_runner.allocate_kv_cache(16)
    return model_runner


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_chained_stages_compute_the_whole_models_logits_on_prefill_then_decode(
    tiny_model_dirs: dict[str, Path], architecture: str
) -> None:
    model_dir = tiny_model_dirs[architecture]
    stages = pipeline_stages(AutoConfig.from_pretrained(model_dir), 2)
    whole = runner(model_dir)
    parts = [runner(model_dir, stage) for stage in stages]
    prefill = SchedulerOutput([chunk("a", [5, 6, 7, 8, 9, 10], 0, [0, 1]), chunk("b", [11, 12, 13], 0, [2])])
    decode = SchedulerOutput([chunk("a", [20], 6, [0, 1]), chunk("b", [21], 3, [2])])
    for batch in (prefill, decode):
        hidden = parts[0].forward(batch)
        assert hidden.shape == (1, batch.num_batched_tokens, whole.model.config.hidden_size)
        torch.testing.assert_close(parts[1].forward(batch, hidden), whole.forward(batch), rtol=1e-5, atol=1e-5)


def test_tied_embeddings_are_on_both_ends_and_the_stages_match_the_whole_model(
    tmp_path: Path,
) -> None:
    model_dir = write_tiny_model(tmp_path / "tied", TinyModelSpec(architecture="qwen2", tie_word_embeddings=True))
    stages = pipeline_stages(AutoConfig.from_pretrained(model_dir), 2)
    whole = runner(model_dir)
    first, last = (runner(model_dir, stage) for stage in stages)
    assert last.model.lm_head.weight is last.model.model.embed_tokens.weight
    batch = SchedulerOutput([chunk("a", [5, 6, 7, 8, 9], 0, [0, 1])])
    torch.testing.assert_close(last.forward(batch, first.forward(batch)), whole.forward(batch), rtol=1e-5, atol=1e-5)


def test_each_stage_holds_its_layers_weights_and_kv_cache_only(layered_dir: Path) -> None:
    config = AutoConfig.from_pretrained(layered_dir)
    whole = runner(layered_dir)
    first, last = (runner(layered_dir, stage) for stage in pipeline_stages(config, 2))
    assert (list(first.kv_caches), list(last.kv_caches)) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert first.kv_shape.bytes_per_block(4) * 2 == whole.kv_shape.bytes_per_block(4)
    assert first.weight_bytes + last.weight_bytes == whole.weight_bytes  # nothing held twice, nothing missing
    names = {
        stage: {name for name, _ in part.model.named_parameters()} for stage, part in (("first", first), ("last", last))
    }
    assert "model.embed_tokens.weight" in names["first"] and "lm_head.weight" not in names["first"]
    assert "lm_head.weight" in names["last"] and "model.embed_tokens.weight" not in names["last"]
    assert not any(name.startswith("model.layers.4.") for name in names["first"])
    assert not any(name.startswith("model.layers.3.") for name in names["last"])
