"""Session-wide fixtures: tiny random-weight models written once per test session; a real Redis per
test that asks for one; and the test order: tests/cluster first, whatever order the paths are given in."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import torch

from engine.demo.tiny_models import ARCHITECTURES, TinyModelSpec, write_tiny_model
from tests.services import RedisServer

# Two threads match the CI machine; more only adds contention there.
torch.set_num_threads(2)

CLUSTER_TESTS_DIR = Path(__file__).parent / "cluster"


class _HasPath(Protocol):
    @property
    def path(self) -> Path: ...


_Item = TypeVar("_Item", bound=_HasPath)


def cluster_tests_first(items: Sequence[_Item], cluster_dir: Path = CLUSTER_TESTS_DIR) -> list[_Item]:
    """`items` with every test under `cluster_dir` moved before all others; a stable partition, so
    the order within each part (and so any fixture grouping pytest made) stays as it was."""
    cluster = [item for item in items if item.path.is_relative_to(cluster_dir)]
    rest = [item for item in items if not item.path.is_relative_to(cluster_dir)]
    return cluster + rest


@pytest.hookimpl(trylast=True)  # after pytest groups the items by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tests/cluster starts its own two-node Ray cluster and needs a process where Ray has not been
    # initialized yet; tests/serve starts a session-wide single-node Ray that stays up until the
    # session ends. Running the cluster tests first makes e.g. `pytest tests/serve tests/cluster` work.
    items[:] = cluster_tests_first(items)


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it starts in milliseconds), stopped after the test."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
