"""The OpenAI-compatible HTTP surface, as a FastAPI app over one `ModelClient` per model.

Every failure, whatever raised it, is answered by `_error_response` through `to_api_error`: an
OpenAI-shaped body with the right status. Before a stream's first chunk that is the HTTP
response; after it, an SSE `error` event followed by `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import ApiError, InvalidRequestError, ModelNotFoundError, to_api_error
from deployments.generation import GenerationChunk, GenerationRequest
from deployments.protocol import ChatCompletionRequest, CompletionRequest, parse_body
from deployments.responses import Endpoint, ResponseWriter
from deployments.translate import chat_to_generation, completion_to_generation

__all__ = ["ModelCard", "ModelClient", "build_openai_app", "model_card"]


class ModelClient(Protocol):
    """How the app reaches one model's replicas (a Serve handle in production, a fake in tests)."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The request's chunks; closing the generator cancels the request."""
        ...


@dataclass(frozen=True)
class ModelCard:
    """What /v1/models says about a model."""

    id: str
    # Where the weights come from (a directory, a hub id, or "demo:<architecture>").
    root: str
    created: int


def build_openai_app(models: Mapping[str, ModelClient], cards: list[ModelCard]) -> FastAPI:
    app = FastAPI(title="Switchyard", summary="OpenAI-compatible API over many models")
    cards_by_id = {card.id: card for card in cards}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods, in the OpenAI error shape (keeping headers such as Allow).
        response = _error_response(_http_error_as_api_error(error))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(InvalidRequestError(str(error)))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_json(card) for card in cards]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        card = cards_by_id.get(model_id)
        if card is None:
            raise ModelNotFoundError.for_model(model_id, list(cards_by_id))
        return _model_json(card)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _answer("completion", await request.body(), models)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _answer("chat", await request.body(), models)

    return app


async def _answer(endpoint: Endpoint, raw_body: bytes, models: Mapping[str, ModelClient]) -> Response:
    """Validate, pick the model, run the request; any failure becomes an OpenAI-shaped error."""
    model: str | None = None
    try:
        if endpoint == "completion":
            completion = parse_body(CompletionRequest, raw_body)
            model, include_usage = completion.model, completion.include_usage
            generation = completion_to_generation(completion, f"cmpl-{uuid.uuid4().hex}")
            with_logprobs = completion.logprobs is not None
        else:
            chat = parse_body(ChatCompletionRequest, raw_body)
            model, include_usage = chat.model, chat.include_usage
            generation = chat_to_generation(chat, f"chatcmpl-{uuid.uuid4().hex}")
            with_logprobs = chat.logprobs
        client = models.get(model)
        if client is None:
            raise ModelNotFoundError.for_model(model, list(models))
        writer = ResponseWriter(endpoint, generation.request_id, model, generation.n, with_logprobs)
        return await _respond(client, generation, writer, include_usage)
    except Exception as error:  # noqa: BLE001 - the one place failures become HTTP answers
        return _error_response(error, model)


async def _respond(
    client: ModelClient, generation: GenerationRequest, writer: ResponseWriter, include_usage: bool
) -> Response:
    chunks = client.stream(generation)
    try:
        # Wait for the first chunk before answering, so a refused request gets its own status.
        first = await anext(chunks)
        if not generation.stream:
            writer.add(first)
            async for chunk in chunks:
                writer.add(chunk)
            return JSONResponse(writer.response())
    except BaseException:
        await chunks.aclose()
        raise
    return StreamingResponse(
        _sse(first, chunks, writer, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    first: GenerationChunk, chunks: AsyncGenerator[GenerationChunk, None], writer: ResponseWriter, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events; closing this iterator (the client left) closes the model's stream."""
    try:
        yield _event(writer.stream_chunk(first))
        async for chunk in chunks:
            yield _event(writer.stream_chunk(chunk))
        if include_usage:
            yield _event(writer.usage_chunk())
    except Exception as error:  # noqa: BLE001 - the status is sent: report the failure in-stream
        yield _event(to_api_error(error, model=writer.model).body())
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _error_response(error: BaseException, model: str | None = None) -> JSONResponse:
    api_error = to_api_error(error, model=model)
    return JSONResponse(api_error.body(), status_code=api_error.status_code, headers=api_error.headers())


def _http_error_as_api_error(error: StarletteHTTPException) -> ApiError:
    api_error = InvalidRequestError(str(error.detail))
    api_error.status_code = error.status_code
    return api_error


def _model_json(card: ModelCard) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": "switchyard", "root": card.root}


def model_card(model_id: str, root: str) -> ModelCard:
    return ModelCard(id=model_id, root=root, created=int(time.time()))
