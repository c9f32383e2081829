"""Session-wide fixtures: tiny random-weight models written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.demo.tiny_models import ARCHITECTURES, TinyModelSpec, write_tiny_model

# Two threads match the CI machine; more only adds contention there.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small model directory (weights, config, tokenizer) per architecture."""
    root = tmp_path_factory.mktemp("models")
    return {arch: write_tiny_model(root / arch, TinyModelSpec(architecture=arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def layered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose decoder layers, not its embeddings, hold most of the weights."""
    spec = TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408)
    return write_tiny_model(tmp_path_factory.mktemp("layered"), spec)
