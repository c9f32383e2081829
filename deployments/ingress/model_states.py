"""What each model's deployment is doing now (ready, starting, scaled to zero), for /v1/models and
for telling a cold start from an ordinary wait."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ray import serve
from ray.serve.schema import ReplicaState

__all__ = ["ModelState", "ServeModelStates", "model_state"]

logger = logging.getLogger("ray.serve")

State = Literal["ready", "starting", "scaled_to_zero", "unknown"]


@dataclass(frozen=True)
class ModelState:
    state: State
    running_replicas: int
    starting_replicas: int

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "running_replicas": self.running_replicas,
            "starting_replicas": self.starting_replicas,
        }


UNKNOWN = ModelState("unknown", 0, 0)

# Replica states that will serve soon: Serve is placing or starting them.
_COMING_UP = (ReplicaState.STARTING, ReplicaState.UPDATING, ReplicaState.RECOVERING)


class ServeModelStates:
    """The replica counts of the app's model deployments, read from the Serve controller in the
    background at most once per `max_age_s`; requests only ever see the last value read, so a slow
    or failing controller delays and fails none of them."""

    def __init__(
        self,
        app_name: str,
        deployments: Mapping[str, str],
        max_age_s: float = 1.0,
        first_read_timeout_s: float = 2.0,
    ) -> None:
        self.app_name = app_name
        self.deployments = dict(deployments)  # model name -> deployment name
        self.max_age_s = max_age_s
        self.first_read_timeout_s = first_read_timeout_s
        self._states: dict[str, ModelState] = {}
        self._read_once = False
        self._read_at = float("-inf")
        self._refresh: asyncio.Task[None] | None = None

    async def states(self, fresh: bool = False) -> dict[str, ModelState]:
        """The last states read ({} when none could be read yet); starts a refresh when stale.

        `fresh`: wait for that refresh (up to `first_read_timeout_s`), as /v1/models does; the
        request path never waits, except for the very first read.
        """
        if self._refresh is None and time.monotonic() - self._read_at > self.max_age_s:
            self._refresh = asyncio.create_task(self._refresh_states())
        if (fresh or not self._read_once) and self._refresh is not None:
            await asyncio.wait({self._refresh}, timeout=self.first_read_timeout_s)
        return self._states

    async def _refresh_states(self) -> None:
        try:
            self._states = await asyncio.to_thread(self._read)
            self._read_once = True
        except Exception as error:  # noqa: BLE001 - states are advisory; keep the last ones
            logger.warning("could not read model states from the Serve controller: %r", error)
        finally:
            self._read_at = time.monotonic()  # a failure, too, waits max_age_s before the next try
            self._refresh = None

    def _read(self) -> dict[str, ModelState]:
        application = serve.status().applications.get(self.app_name)
        if application is None:
            return {}
        states = {}
        for model, deployment_name in self.deployments.items():
            deployment = application.deployments.get(deployment_name)
            states[model] = UNKNOWN if deployment is None else model_state(deployment.replica_states)
        return states


def model_state(replica_states: Mapping[ReplicaState, int]) -> ModelState:
    running = replica_states.get(ReplicaState.RUNNING, 0)
    starting = sum(replica_states.get(state, 0) for state in _COMING_UP)
    if running:
        return ModelState("ready", running, starting)
    if starting:
        return ModelState("starting", 0, starting)
    return ModelState("scaled_to_zero", 0, 0)
