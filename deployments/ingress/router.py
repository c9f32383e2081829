"""Router: the ingress deployment. It speaks OpenAI over HTTP and forwards to each model's LLMServer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import RequestLimits
from deployments.errors import DEFAULT_RETRY_AFTER_S, ApiError, ModelUnavailableError, OverloadedError
from deployments.generation import GenerationChunk, GenerationRequest, Tokenized, TokenizeRequest
from deployments.ingress.admin import add_admin_routes
from deployments.ingress.admission import Admission
from deployments.ingress.model_states import ModelState, ServeModelStates
from deployments.ingress.openai_app import ModelCard, build_openai_app
from deployments.ingress.serve_context import remote_as_own_request
from deployments.observability.ray_metrics import RayMetricsBackend
from deployments.observability.router_recorder import RouterMetrics
from deployments.tenants.fair_queue import FairQueue, QueueFullError
from deployments.tenants.gate import TenantAccess, TenantGate
from deployments.tenants.store import open_auth_store

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
    # The deployment's requests per replica, and its queue bound (-1: none): with tenants, the
    # Router's fair queue dispatches what the running replicas take and holds the rest.
    max_ongoing_requests: int = 64
    max_queued_requests: int = -1


class HandleModelClient:
    """Reaches a model's replicas through its (cached) deployment handle, streaming.

    A model scaled to zero holds the request in its handle's queue while Serve starts a replica.
    Every request's wait for its first token is bounded: by the model's cold-start timeout when
    it arrived with no running replica (as the last state read says), by its first-token timeout
    otherwise, so a request judged warm from a state read just before a scale-down is bounded too.
    """

    def __init__(
        self,
        name: str,
        handle: DeploymentHandle,
        route: ModelRoute,
        states: ServeModelStates,
        router_replicas: int = 1,
        fair: bool = False,
        metrics: RouterMetrics | None = None,
    ) -> None:
        """`router_replicas`: how many Router replicas share the model's replicas (each admits its
        share of them plus its own handle's queue bound). `fair`: with tenants, requests beyond this
        replica's share wait in a FairQueue; otherwise in Serve's queue alone, and the Routers are
        assumed balanced (Serve's proxy picks the less loaded of two): a Router whose peers hold more
        than their share of the replicas can still see Serve refuse some of its requests.
        `metrics`: where held cold starts are counted."""
        self.name = name
        self.metrics = metrics
        self.handle = handle.options(stream=True)
        self.unary_handle = handle.options(stream=False)
        self.route = route
        self.states = states
        self.router_replicas = router_replicas
        self.queue = FairQueue(capacity=self._capacity(None), max_waiting=route.max_queued_requests) if fair else None
        self.admission = Admission(name)
        # The model's state as the last request read it: what admission bounds the next one by.
        self._last_state: ModelState | None = None

    def _capacity(self, state: ModelState | None) -> int:
        """This router replica's share of what the model's running replicas take (one replica's worth
        while none runs, so a cold start still gets requests to hold)."""
        replicas = max(1, state.running_replicas if state is not None else 1)
        return max(1, replicas * self.route.max_ongoing_requests // self.router_replicas)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The request's chunks; refused at once with OverloadedError when this replica already
        holds its share of what the model's running replicas take plus its queue bound (see admission)."""
        limit = None
        # Until a request has read the model's state, Serve's own queue bound alone applies.
        if self.route.max_queued_requests >= 0 and self._last_state is not None:
            limit = self._capacity(self._last_state) + self.route.max_queued_requests
        return self.admission.admit(self._admitted_stream(request), limit)

    async def _admitted_stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        queued = time.monotonic()
        state = (await self.states.states()).get(self.name)
        self._last_state = state
        cold = state is not None and state.running_replicas == 0
        timeout_s = self.route.cold_start_timeout_s if cold else self.route.first_token_timeout_s
        async with self._dispatch_slot(request, state, timeout_s):
            async for chunk in self._stream(request, state, cold, queued, timeout_s):
                yield chunk

    def _dispatch_slot(
        self, request: GenerationRequest, state: ModelState | None, timeout_s: float
    ) -> contextlib.AbstractAsyncContextManager[None]:
        if self.queue is None:
            return contextlib.nullcontext()
        self.queue.set_capacity(self._capacity(state))
        return _bounded_slot(self.queue, request, self.name, timeout_s)

    async def _stream(
        self, request: GenerationRequest, state: ModelState | None, cold: bool, queued: float, timeout_s: float
    ) -> AsyncGenerator[GenerationChunk, None]:
        responses = remote_as_own_request(self.handle.generate, request)
        finished = False
        try:
            try:
                item = await self._first(responses, timeout_s)
            except Exception:
                if cold and self.metrics is not None:
                    self.metrics.cold_start(self.name, served=False, wait_s=time.monotonic() - queued)
                raise
            if cold:
                waited_s = time.monotonic() - queued
                if self.metrics is not None:
                    self.metrics.cold_start(self.name, served=True, wait_s=waited_s)
                logger.info(
                    "%s: cold start: the request waited %.1fs for its first token (%s at arrival)",
                    self.name,
                    waited_s,
                    state.state if state is not None else "unknown",
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

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        return await self._unary("tokenize", request)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._unary("detokenize", token_ids)

    async def _unary(self, method: str, argument: object) -> Any:
        """A replica's answer to `method(argument)`, waited for as long as a first token (a cold
        start's bound while no replica runs); an ApiError it answers is raised."""
        state = (await self.states.states()).get(self.name)
        cold = state is not None and state.running_replicas == 0
        timeout_s = self.route.cold_start_timeout_s if cold else self.route.first_token_timeout_s
        response = remote_as_own_request(getattr(self.unary_handle, method), argument)
        try:
            async with asyncio.timeout(timeout_s):
                result = await response
        except TimeoutError:
            response.cancel()
            raise ModelUnavailableError(
                f"The model {self.name!r} did not answer within {timeout_s:.0f}s. Retry later.",
                code="first_token_timeout",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            ) from None
        except BaseException:  # the client left: Serve no longer cancels this call with its parent
            response.cancel()
            raise
        if isinstance(result, ApiError):
            raise result
        return result

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


@contextlib.asynccontextmanager
async def _bounded_slot(
    queue: FairQueue, request: GenerationRequest, model: str, timeout_s: float
) -> AsyncGenerator[None, None]:
    """A dispatch slot of the model's fair queue, waited for at most `timeout_s`."""
    slot = queue.slot(request.tenant, request.tenant_weight)
    try:
        # In this task (not wait_for's, which on Python 3.11 may swallow a cancellation that
        # comes just as the slot is granted).
        async with asyncio.timeout(timeout_s):
            await slot.__aenter__()
    except QueueFullError:
        raise OverloadedError(
            f"Too many requests are queued for model {model!r}; retry later.",
            code="too_many_requests",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        ) from None
    except TimeoutError:
        raise ModelUnavailableError(
            f"The model {model!r} had no free slot within {timeout_s:.0f}s (every replica is busy). Retry later.",
            code="first_token_timeout",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        ) from None
    try:
        yield
    finally:
        await slot.__aexit__(None, None, None)


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
        access: TenantAccess | None = None,
        num_router_replicas: int = 1,
    ) -> None:
        """`access`: tenants and the store of their keys and spend (None: auth off, open to anyone)."""
        app_name = serve.get_replica_context().app_name
        self.states = ServeModelStates(app_name, {name: route.deployment_name for name, route in routes.items()})
        self.metrics = RouterMetrics(RayMetricsBackend())
        self.clients = {
            name: HandleModelClient(
                name,
                handle,
                routes[name],
                self.states,
                router_replicas=num_router_replicas,
                fair=access is not None,
                metrics=self.metrics,
            )
            for name, handle in handles.items()
        }
        self.cards = cards
        self.keepalive_interval_s = keepalive_interval_s
        self.limits = limits
        self.access = access
        self.gate = (
            None
            if access is None
            else TenantGate(access, open_auth_store(access.auth), on_settle=self.metrics.tenant_settled)
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = build_openai_app(
            self.clients,
            self.cards,
            states=functools.partial(self.states.states, fresh=True),
            keepalive_interval_s=self.keepalive_interval_s,
            limits=self.limits,
            gate=self.gate,
            metrics=self.metrics,
        )
        if self.gate is not None and self.access is not None:
            env = self.access.auth.admin_key_env
            add_admin_routes(app, self.gate, os.environ.get(env), env)
        return app
