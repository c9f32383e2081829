"""Model sources: a path or hub id as given; a demo model written once, in its architecture."""

from __future__ import annotations

from pathlib import Path

from deployments.config import ModelSource
from deployments.replica.model_source import demo_spec, resolve_model_source
from engine.demo.tiny_models import DEMO_LLAMA


def test_paths_and_hub_ids_are_loaded_as_given() -> None:
    assert resolve_model_source(ModelSource(path="/models/m")) == "/models/m"
    assert resolve_model_source(ModelSource(hub_id="org/name")) == "org/name"


def test_each_demo_architecture_is_the_demo_shape_with_its_own_weights() -> None:
    assert demo_spec("llama") == DEMO_LLAMA
    specs = [demo_spec(name) for name in ("llama", "qwen2", "mistral")]
    assert [spec.architecture for spec in specs] == ["llama", "qwen2", "mistral"]
    assert len({spec.seed for spec in specs}) == 3
    assert {spec.hidden_size for spec in specs} == {DEMO_LLAMA.hidden_size}


def test_a_demo_model_is_written_to_its_directory(tmp_path: Path) -> None:
    directory = resolve_model_source(ModelSource(demo="qwen2", demo_dir=str(tmp_path / "demo")))
    assert directory == str(tmp_path / "demo")
    assert (tmp_path / "demo" / "config.json").is_file()
