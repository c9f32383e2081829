"""Router: the ingress deployment. It speaks OpenAI over HTTP and forwards to each model's LLMServer."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.errors import ApiError
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.openai_app import ModelCard, build_openai_app

__all__ = ["HandleModelClient", "Router"]


class HandleModelClient:
    """Reaches a model's replicas through its (cached) deployment handle, streaming."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle.options(stream=True)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        responses = self.handle.generate.remote(request)
        finished = False
        try:
            async for item in responses:
                if isinstance(item, ApiError):
                    finished = True
                    raise item
                yield item
            finished = True
        finally:
            if not finished:
                responses.cancel()  # the replica's generator is cancelled: its engine requests abort


@serve.ingress()
class Router:
    """Holds one handle per model; the FastAPI app is built on the replica, after construction."""

    def __init__(self, handles: dict[str, DeploymentHandle], cards: list[ModelCard]) -> None:
        self.clients = {name: HandleModelClient(handle) for name, handle in handles.items()}
        self.cards = cards

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_openai_app(self.clients, self.cards)
