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

from deployments.config import RequestLimits
from deployments.errors import DEFAULT_RETRY_AFTER_S, ApiError, ModelUnavailableError
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.ingress.model_states import ServeModelStates
from deployments.ingress.openai_app import ModelCard, build_openai_app

__all__ = ["HandleModelClient", "ModelRoute", "Router"]

# Serve's logger: a replica's records go to its log file and console with the request id.
logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ModelRoute:
    """A model's deployment, and how long a request may wait for its first token."""

    deployment_name: str
    # When the request arrives with no running replica (a replica start included).
    cold_start_timeout_s: float
    # Any other request (queued behind busy replicas, or arriving as the model scales to zero).
    first_token_timeout_s: float


class HandleModelClient:
    """Reaches a model's replicas through its (cached) deployment handle, streaming.

    A model scaled to zero holds the request in its handle's queue while Serve starts a replica.
    Every request's wait for its first token is bounded: by the model's cold-start timeout when
    it arrived with no running replica (as the last state read says), by its first-token timeout
    otherwise, so a request judged warm from a state read just before a scale-down is bounded too.
    """

    def __init__(self, name: str, handle: DeploymentHandle, route: ModelRoute, states: ServeModelStates) -> None:
        self.name = name
        self.handle = handle.options(stream=True)
        self.route = route
        self.states = states

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        queued = time.monotonic()
        state = (await self.states.states()).get(self.name)
        cold = state is not None and state.running_replicas == 0
        timeout_s = self.route.cold_start_timeout_s if cold else self.route.first_token_timeout_s
        responses = self.handle.generate.remote(request)
        finished = False
        try:
            item = await self._first(responses, timeout_s)
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

    async def _first(
        self, responses: AsyncGenerator[GenerationChunk | ApiError, None], timeout_s: float
    ) -> GenerationChunk | ApiError:
        try:
            return await asyncio.wait_for(anext(responses), timeout_s)
        except TimeoutError:
            raise ModelUnavailableError(
                f"The model {self.name!r} gave no first token within {timeout_s:.0f}s (a replica may still be "
                "starting, or every replica is busy). Retry later.",
                code="first_token_timeout",
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
        limits: RequestLimits,
    ) -> None:
        app_name = serve.get_replica_context().app_name
        self.states = ServeModelStates(app_name, {name: route.deployment_name for name, route in routes.items()})
        self.clients = {
            name: HandleModelClient(name, handle, routes[name], self.states) for name, handle in handles.items()
        }
        self.cards = cards
        self.keepalive_interval_s = keepalive_interval_s
        self.limits = limits

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_openai_app(
            self.clients,
            self.cards,
            states=functools.partial(self.states.states, fresh=True),
            keepalive_interval_s=self.keepalive_interval_s,
            limits=self.limits,
        )
