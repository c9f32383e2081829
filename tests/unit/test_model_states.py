"""A model's state in /v1/models, from its deployment's replica counts."""

from __future__ import annotations

import pytest
from ray.serve.schema import ReplicaState

from deployments.ingress.model_states import ModelState, model_state


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ({}, ModelState("scaled_to_zero", 0, 0)),
        ({ReplicaState.STOPPING: 1}, ModelState("scaled_to_zero", 0, 0)),
        ({ReplicaState.STARTING: 1}, ModelState("starting", 0, 1)),
        ({ReplicaState.RUNNING: 2, ReplicaState.STARTING: 1}, ModelState("ready", 2, 1)),
        ({ReplicaState.RUNNING: 1, ReplicaState.RECOVERING: 1}, ModelState("ready", 1, 1)),
    ],
)
def test_state_follows_running_and_starting_replicas(replicas: dict[ReplicaState, int], expected: ModelState) -> None:
    assert model_state(replicas) == expected
