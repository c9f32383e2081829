"""Turning a model's configured source into what `from_pretrained` loads."""

from __future__ import annotations

import dataclasses
import fcntl
from pathlib import Path
from typing import TYPE_CHECKING

from deployments.config import DemoModel, ModelSource

if TYPE_CHECKING:
    from engine.demo.tiny_models import TinyModelSpec

__all__ = ["demo_spec", "resolve_model_source"]

# Each demo architecture's weight seed: the same small shape in each, with different weights.
_DEMO_SEEDS: dict[DemoModel, int] = {"llama": 0, "qwen2": 1, "mistral": 2}


def demo_spec(demo: DemoModel) -> TinyModelSpec:
    """The built-in demo model of an architecture (imported here: the model writer loads torch,
    which building the app does not need)."""
    from engine.demo.tiny_models import DEMO_LLAMA

    return dataclasses.replace(DEMO_LLAMA, architecture=demo, seed=_DEMO_SEEDS[demo])


def resolve_model_source(source: ModelSource) -> str:
    """A local directory or hub id. A demo model is written first, once per machine."""
    if source.path is not None:
        return source.path
    if source.hub_id is not None:
        return source.hub_id
    assert source.demo is not None  # ModelSource holds exactly one of the three
    directory = Path(source.demo_dir or Path.home() / ".cache" / "switchyard" / f"demo-{source.demo}").expanduser()
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Replicas on one machine may start together: one writes, the others wait and then reuse.
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from engine.demo.tiny_models import write_tiny_model

        write_tiny_model(directory, demo_spec(source.demo))
    return str(directory)
