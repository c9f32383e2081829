"""Turning a model's configured source into what `from_pretrained` loads."""

from __future__ import annotations

import dataclasses
import fcntl
from pathlib import Path

from deployments.config import DemoModel, ModelSource
from engine.demo.tiny_models import DEMO_LLAMA, TinyModelSpec, write_tiny_model

__all__ = ["DEMO_SPECS", "resolve_model_source"]

# The built-in demo models: the same small shape in each architecture, with different weights.
DEMO_SPECS: dict[DemoModel, TinyModelSpec] = {
    "llama": DEMO_LLAMA,
    "qwen2": dataclasses.replace(DEMO_LLAMA, architecture="qwen2", seed=1),
    "mistral": dataclasses.replace(DEMO_LLAMA, architecture="mistral", seed=2),
}


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
        write_tiny_model(directory, DEMO_SPECS[source.demo])
    return str(directory)
