"""Router: the ingress deployment. It speaks OpenAI over HTTP and forwards to each model's LLMServer."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.errors import DEFAULT_RETRY_AFTER_S, ApiError, ModelUnavailableError
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.model_states import ServeModelStates
from deployments.openai_app import ModelCard, build_openai_app

__all__ = ["HandleModelClient", "ModelRoute", "Router"]

# Serve's logger: a replica's records go to its log file and console with the request id.
logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ModelRoute:
    """A model's deployment, and how long its first token may take (a replica start included)."""

    deployment_name: str
    cold_start_timeout_s: float


class HandleModelClient:
    """Reaches a model's replicas through its (cached) deployment handle, streaming.

    A model scaled to zero holds the request in its handle's queue while Serve starts a replica;
    then, and only then, the wait for the first token is bounded by the model's cold-start timeout
    (a request queued behind busy replicas waits as long as it takes: it was accepted).
    """

    def __init__(self, name: str, handle: DeploymentHandle, route: ModelRoute, states: ServeModelStates) -> None:
        self.name = name
        self.handle = handle.options(stream=True)
        self.cold_start_timeout_s = route.cold_start_timeout_s
        self.states = states

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        queued = time.monotonic()
        state = (await self.states.states()).get(self.name)
        cold = state is not None and state.running_replicas == 0
        responses = self.handle.generate.remote(request)
        finished = False
        try:
            item = await (self._first_after_start(responses) if cold else anext(responses))
            if cold:
                logger.info(
                    "%s: cold start: the request waited %.1fs for its first token (%s at arrival)",
                    self.name,
                    time.monotonic() - queued,
                    state.state,
                )
            while True:
                if isinstance(item, ApiError):
                    finished = True
                    raise item
                yield item
                try:
                    item = await anext(responses)
                except StopAsyncIteration:
                    break
            finished = True
        finally:
            if not finished:
                responses.cancel()  # the replica's generator is cancelled: its engine requests abort

    async def _first_after_start(
        self, responses: AsyncGenerator[GenerationChunk | ApiError, None]
    ) -> GenerationChunk | ApiError:
        try:
            return await asyncio.wait_for(anext(responses), self.cold_start_timeout_s)
        except TimeoutError:
            raise ModelUnavailableError(
                f"The model {self.name!r} gave no first token within {self.cold_start_timeout_s:.0f}s (a replica "
                "may still be starting). Retry later.",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            ) from None


@serve.ingress()
class Router:
    """Holds one handle per model; the FastAPI app is built on the replica, after construction."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        routes: dict[str, ModelRoute],
        cards: list[ModelCard],
        keepalive_interval_s: float,
    ) -> None:
        app_name = serve.get_replica_context().app_name
        self.states = ServeModelStates(app_name, {name: route.deployment_name for name, route in routes.items()})
        self.clients = {
            name: HandleModelClient(name, handle, routes[name], self.states) for name, handle in handles.items()
        }
        self.cards = cards
        self.keepalive_interval_s = keepalive_interval_s

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_openai_app(
            self.clients,
            self.cards,
            states=functools.partial(self.states.states, fresh=True),
            keepalive_interval_s=self.keepalive_interval_s,
        )
