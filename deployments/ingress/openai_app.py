"""The OpenAI-compatible HTTP surface, as a FastAPI app over one `ModelClient` per model.

Every failure, whatever raised it, is answered by `_error_response` through `to_api_error`: an
OpenAI-shaped body with the right status. Before a stream's first chunk that is the HTTP
response; after it, an SSE `error` event followed by `data: [DONE]`. A stream whose first chunk
takes longer than the keep-alive interval (a model starting from zero replicas) is answered 200
at once and sent SSE comments until the chunk comes, so its failures are events too.

With a `TenantGate` (auth on), every request is authenticated, checked against its tenant's models
and admitted against its limits before any engine work, and settled once when it ends (before the
response's last byte); its answer carries the tenant's x-ratelimit-* headers.

Every completion request, however it ends, is counted once in the Router's metrics and logged as
one structured line (`RequestRecord`, finished by its `Settlement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import RequestLimits
from deployments.errors import ApiError, InvalidRequestError, ModelNotFoundError, to_api_error
from deployments.generation import GenerationChunk, GenerationRequest, Tokenized, TokenizeRequest
from deployments.ingress.batches import stream_all
from deployments.ingress.limits import check_request_limits, read_body
from deployments.ingress.model_states import ModelState
from deployments.ingress.openapi_docs import document_bodies, request_schema
from deployments.ingress.prompt_report import PromptReport
from deployments.ingress.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeBody,
    TokenizeBody,
    parse_body,
)
from deployments.ingress.responses import Endpoint, ResponseWriter
from deployments.ingress.settlement import Settlement
from deployments.ingress.translate import chat_to_generation, completion_to_generations, tokenize_request
from deployments.observability.request_log import RequestRecord
from deployments.observability.router_recorder import RouterMetrics
from deployments.tenants.gate import Caller, TenantGate
from deployments.tenants.store import StoreUnavailableError

__all__ = ["KEEPALIVE", "ModelCard", "ModelClient", "StatesSource", "build_openai_app", "model_card"]


class ModelClient(Protocol):
    """How the app reaches one model's replicas (a Serve handle in production, a fake in tests)."""

    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The request's chunks; closing the generator cancels the request."""
        ...

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """The model's tokenizer on a text or a conversation; raises ApiError for one it refuses."""
        ...

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids; raises ApiError for ids the model does not have."""
        ...


@dataclass(frozen=True)
class ModelCard:
    """What /v1/models says about a model."""

    id: str
    # Where the weights come from (a directory, a hub id, or "demo:<architecture>").
    root: str
    created: int


StatesSource = Callable[[], Awaitable[Mapping[str, ModelState]]]

# What a streaming client receives while its first token is awaited: an SSE comment, which
# OpenAI clients ignore and which keeps proxies from closing an idle connection.
KEEPALIVE = ": waiting for the model\n\n"


def build_openai_app(
    models: Mapping[str, ModelClient],
    cards: list[ModelCard],
    *,
    states: StatesSource | None = None,
    keepalive_interval_s: float = 5.0,
    limits: RequestLimits | None = None,
    gate: TenantGate | None = None,
    metrics: RouterMetrics | None = None,
) -> FastAPI:
    """`states`: each model's replica state for /v1/models (none: the cards alone).
    `keepalive_interval_s`: a stream whose first token takes longer starts with keep-alive comments.
    `limits`: what one request may ask for (default: `RequestLimits()`).
    `gate`: API keys and tenants' limits (none: open to anyone).
    `metrics`: where each request's end is counted (none: only its log line)."""
    limits = limits or RequestLimits()
    app = FastAPI(title="Switchyard", summary="OpenAI-compatible API over many models")

    async def caller_of(request: Request) -> Caller | None:
        return None if gate is None else await gate.authenticate(request.headers.get("authorization"))

    def visible(caller: Caller | None) -> list[ModelCard]:
        if gate is None or caller is None:
            return cards
        allowed = set(gate.models_for(caller))
        return [card for card in cards if card.id in allowed]

    async def current_states() -> Mapping[str, ModelState]:
        return {} if states is None else await states()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods, in the OpenAI error shape (keeping headers such as Allow).
        response = _error_response(_http_error_as_api_error(error))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(StoreUnavailableError)
    async def _store_error(request: Request, error: StoreUnavailableError) -> JSONResponse:
        # Routes other than the completions (models, usage, admin) meet the store too.
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(InvalidRequestError(str(error)))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        shown = visible(await caller_of(request))
        now = await current_states()
        return {"object": "list", "data": [_model_json(card, now.get(card.id)) for card in shown]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        shown = {card.id: card for card in visible(await caller_of(request))}
        card = shown.get(model_id)
        if card is None:
            raise ModelNotFoundError.for_model(model_id, list(shown))
        return _model_json(card, (await current_states()).get(card.id))

    @app.post("/v1/completions", openapi_extra=request_schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await _answer("completion", request, models, keepalive_interval_s, limits, gate, metrics)

    @app.post("/v1/chat/completions", openapi_extra=request_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await _answer("chat", request, models, keepalive_interval_s, limits, gate, metrics)

    @app.post("/tokenize", openapi_extra=request_schema(TokenizeBody))
    async def tokenize(request: Request) -> Response:
        return await _answer_tokenizer(request, TokenizeBody, models, limits, gate)

    @app.post("/detokenize", openapi_extra=request_schema(DetokenizeBody))
    async def detokenize(request: Request) -> Response:
        return await _answer_tokenizer(request, DetokenizeBody, models, limits, gate)

    document_bodies(app)

    @app.get("/v1/usage")
    async def usage(request: Request) -> dict[str, Any]:
        caller = await caller_of(request)
        if gate is None or caller is None:
            raise InvalidRequestError("Usage is kept per tenant: this server has no API keys (auth is off).")
        return await gate.usage(caller.tenant)

    return app


async def _answer(
    endpoint: Endpoint,
    request: Request,
    models: Mapping[str, ModelClient],
    keepalive_interval_s: float,
    limits: RequestLimits,
    gate: TenantGate | None,
    metrics: RouterMetrics | None,
) -> Response:
    """Authenticate, validate, pick the model, admit, run the request; any failure becomes an
    OpenAI-shaped error (after settling what an admitted request used)."""
    model: str | None = None
    user: str | None = None
    record = RequestRecord(endpoint, metrics)
    settlement = Settlement(record)
    writer: ResponseWriter | None = None
    try:
        caller = None if gate is None else await gate.authenticate(request.headers.get("authorization"))
        if caller is not None:
            record.tenant, record.key_id = caller.tenant.name, caller.key_id
        raw_body = await read_body(request, limits.max_body_bytes)
        body = parse_body(CompletionRequest if endpoint == "completion" else ChatCompletionRequest, raw_body)
        model, include_usage = body.model, body.include_usage
        record.model, record.model_is_deployed, record.stream = model, model in models, body.stream
        check_request_limits(body, limits)
        if isinstance(body, CompletionRequest):
            request_id = f"cmpl-{uuid.uuid4().hex}"
            generations = completion_to_generations(body, request_id)
            with_logprobs = body.logprobs is not None
        else:
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            generations = [chat_to_generation(body, request_id)]
            with_logprobs = body.logprobs
        record.request_id, user = request_id, body.user
        if gate is not None and caller is not None:
            gate.check_model(caller, model)
            for generation in generations:
                generation.tenant, generation.tenant_weight = caller.tenant.name, caller.tenant.weight
        client = models.get(model)
        if client is None:
            raise ModelNotFoundError.for_model(model, list(models))
        writer = ResponseWriter(
            endpoint,
            request_id,
            model,
            len(generations) * body.n,
            with_logprobs,
            body.continuous_usage,
            body.n,
            _prompt_report(body),
            _tool_names(body),
        )
        if gate is not None and caller is not None:
            settlement.gate, settlement.ticket = gate, await gate.admit(caller, model, generations, request_id)
        return await _respond(client, generations, writer, include_usage, keepalive_interval_s, settlement)
    except Exception as error:  # noqa: BLE001 - the one place failures become HTTP answers
        api_error = to_api_error(error, model=model, user=user)
        await settlement.settle(writer, api_error.status_code, api_error)
        response = _api_error_response(api_error)
        response.headers.update(settlement.headers())
        return response
    except BaseException:  # the client left (this task is cancelled) before the answer began
        settlement.settle_soon(writer)
        raise


async def _answer_tokenizer(
    request: Request,
    body_type: type[TokenizeBody] | type[DetokenizeBody],
    models: Mapping[str, ModelClient],
    limits: RequestLimits,
    gate: TenantGate | None,
) -> Response:
    """/tokenize and /detokenize (vLLM's shapes): behind the same keys and model permissions as the
    completions, but no engine work, so neither admitted against limits nor settled."""
    try:
        caller = None if gate is None else await gate.authenticate(request.headers.get("authorization"))
        body = parse_body(body_type, await read_body(request, limits.max_body_bytes))
        if gate is not None and caller is not None:
            gate.check_model(caller, body.model)
        client = models.get(body.model)
        if client is None:
            raise ModelNotFoundError.for_model(body.model, list(models))
        if isinstance(body, DetokenizeBody):
            return JSONResponse({"prompt": await client.detokenize(body.tokens)})
        result = await client.tokenize(tokenize_request(body))
        return JSONResponse(
            {
                "count": len(result.token_ids),
                "max_model_len": result.max_model_len,
                "tokens": result.token_ids,
                "token_strs": result.token_strs,
            }
        )
    except Exception as error:  # noqa: BLE001 - the one place failures become HTTP answers
        return _error_response(error)


async def _respond(
    client: ModelClient,
    generations: list[GenerationRequest],
    writer: ResponseWriter,
    include_usage: bool,
    keepalive_interval_s: float,
    settlement: Settlement,
) -> Response:
    chunks = stream_all(client, generations)
    stream = generations[0].stream
    first_chunk = asyncio.ensure_future(anext(chunks))
    try:
        # Wait for the first chunk before answering, so a refused request gets its own status. A
        # stream whose first chunk is slow (a replica starting) is answered at once, kept alive.
        if stream:
            await asyncio.wait({first_chunk}, timeout=keepalive_interval_s)
            if not first_chunk.done():
                events = _sse_after_wait(first_chunk, chunks, writer, include_usage, keepalive_interval_s, settlement)
                return _EventStream(events, settlement.headers(), _closer(first_chunk, chunks, writer, settlement))
        first = await first_chunk
        if not stream:
            writer.add(first)
            async for chunk in chunks:
                writer.add(chunk)
            await settlement.settle(writer, 200)
            return JSONResponse(writer.response(), headers=settlement.headers())
    except Exception:
        await _close(first_chunk, chunks)
        raise  # settled by the caller, with the error's answer
    except BaseException:  # the client left (this task is cancelled)
        settlement.settle_soon(writer)
        await _close(first_chunk, chunks)
        raise
    events = _sse(first, chunks, writer, include_usage, settlement)
    return _EventStream(events, settlement.headers(), _closer(first_chunk, chunks, writer, settlement))


def _prompt_report(body: CompletionRequest | ChatCompletionRequest) -> PromptReport:
    if isinstance(body, CompletionRequest) and body.echo:
        echo_prompts = [prompt if isinstance(prompt, str) else None for prompt in body.prompts]
        return PromptReport(echo_prompts, body.logprobs or 0, body.prompt_logprobs)
    return PromptReport(vllm_top=body.prompt_logprobs)


def _tool_names(body: CompletionRequest | ChatCompletionRequest) -> set[str] | None:
    """The functions whose calls a chat answer is parsed for (None: not parsed)."""
    if isinstance(body, CompletionRequest) or not body.tools or body.effective_tool_choice == "none":
        return None
    return {tool.function.name for tool in body.tools}


class _EventStream(StreamingResponse):
    """An SSE response that, however it ends, settles and closes the model's stream: Starlette
    neither starts nor closes the body iterator when the client is gone before the first event."""

    def __init__(
        self, events: AsyncIterator[str], headers: dict[str, str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"} | headers,
        )
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def _closer(
    first_chunk: asyncio.Future[GenerationChunk],
    chunks: AsyncGenerator[GenerationChunk, None],
    writer: ResponseWriter,
    settlement: Settlement,
) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        settlement.settle_soon(writer)  # nothing to do when the stream settled itself
        with contextlib.suppress(RuntimeError):  # the events' generator is closing the stream itself
            await _close(first_chunk, chunks)

    return close


async def _close(first_chunk: asyncio.Future[GenerationChunk], chunks: AsyncGenerator[GenerationChunk, None]) -> None:
    """Stop the model's stream, whether or not its first chunk is still being awaited."""
    first_chunk.cancel()
    await asyncio.gather(first_chunk, return_exceptions=True)  # the generator is no longer running
    await chunks.aclose()


async def _sse_after_wait(
    first_chunk: asyncio.Future[GenerationChunk],
    chunks: AsyncGenerator[GenerationChunk, None],
    writer: ResponseWriter,
    include_usage: bool,
    keepalive_interval_s: float,
    settlement: Settlement,
) -> AsyncIterator[str]:
    """Keep-alive comments until the first chunk, then the stream; a failure becomes an error event."""
    try:
        while not first_chunk.done():
            yield KEEPALIVE
            await asyncio.wait({first_chunk}, timeout=keepalive_interval_s)
        first = first_chunk.result()
    except Exception as error:  # noqa: BLE001 - the status is sent: report the failure in-stream
        await _close(first_chunk, chunks)
        api_error = to_api_error(error, model=writer.model)
        await settlement.settle(writer, api_error.status_code, api_error)
        yield _event(api_error.body())
        yield "data: [DONE]\n\n"
        return
    except BaseException:  # the client left while waiting
        settlement.settle_soon(writer)
        await _close(first_chunk, chunks)
        raise
    async for event in _sse(first, chunks, writer, include_usage, settlement):
        yield event


async def _sse(
    first: GenerationChunk,
    chunks: AsyncGenerator[GenerationChunk, None],
    writer: ResponseWriter,
    include_usage: bool,
    settlement: Settlement,
) -> AsyncIterator[str]:
    """Server-sent events; closing this iterator (the client left) closes the model's stream and
    settles what was sent."""
    try:
        yield _event(writer.stream_chunk(first))
        async for chunk in chunks:
            yield _event(writer.stream_chunk(chunk))
        await settlement.settle(writer, 200)
        if include_usage:
            yield _event(writer.usage_chunk())
    except Exception as error:  # noqa: BLE001 - the status is sent: report the failure in-stream
        api_error = to_api_error(error, model=writer.model)
        await settlement.settle(writer, api_error.status_code, api_error)
        yield _event(api_error.body())
    finally:
        settlement.settle_soon(writer)  # the client left mid-stream (nothing to do otherwise)
        await chunks.aclose()
    yield "data: [DONE]\n\n"


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _error_response(error: BaseException) -> JSONResponse:
    return _api_error_response(to_api_error(error))


def _api_error_response(api_error: ApiError) -> JSONResponse:
    return JSONResponse(api_error.body(), status_code=api_error.status_code, headers=api_error.headers())


def _http_error_as_api_error(error: StarletteHTTPException) -> ApiError:
    api_error = InvalidRequestError(str(error.detail))
    api_error.status_code = error.status_code
    return api_error


def _model_json(card: ModelCard, state: ModelState | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": "switchyard",
        "root": card.root,
    }
    if state is not None:
        body["status"] = state.to_json()  # ready / starting / scaled_to_zero, with replica counts
    return body


def model_card(model_id: str, root: str) -> ModelCard:
    return ModelCard(id=model_id, root=root, created=int(time.time()))
