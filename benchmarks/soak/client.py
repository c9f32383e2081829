"""Sending one request and writing down what became of it, as a client sees it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.serving_metrics import chunk_finish_reason, chunk_text, sse_data
from benchmarks.soak.ledger import Entry, Outcome

__all__ = ["Shot", "classify_answer", "fire"]

_QUOTE = 160


@dataclass(frozen=True)
class Shot:
    """One request: a JSON body (or raw bytes, for bad input) to a path, and where the client hangs
    up: after this many data chunks of a stream (0: as soon as the headers arrive), or after this
    many seconds if no answer has come by then (a Router sends a stream's headers with its first
    token, so this is a hang-up before the first token)."""

    path: str
    body: dict[str, Any] | bytes
    headers: dict[str, str] = field(default_factory=dict)
    abort_after_chunks: int | None = None
    abort_after_s: float | None = None


async def fire(client: httpx.AsyncClient, shot: Shot, hang_after_s: float) -> Entry:
    """Send `shot`; an answer still incomplete after `hang_after_s` is HUNG. A shot with
    `abort_after_s` is hung up on at that time if it is not done by then (ABORTED)."""
    if shot.abort_after_s is not None:
        try:
            return await asyncio.wait_for(_send(client, shot), shot.abort_after_s)
        except TimeoutError:
            return Entry(Outcome.ABORTED, detail=f"hung up after {shot.abort_after_s:.2f} s")
    try:
        return await asyncio.wait_for(_send(client, shot), hang_after_s)
    except TimeoutError:
        return Entry(Outcome.HUNG, detail=f"no complete answer within {hang_after_s:.0f} s")


async def _send(client: httpx.AsyncClient, shot: Shot) -> Entry:
    content = shot.body if isinstance(shot.body, bytes) else json.dumps(shot.body).encode()
    headers = {"Content-Type": "application/json", **shot.headers}
    start = time.perf_counter()
    try:
        async with client.stream("POST", shot.path, content=content, headers=headers) as response:
            if response.status_code >= 300:
                return _refusal(response.status_code, response.headers, await response.aread())
            if "text/event-stream" in response.headers.get("content-type", ""):
                return await _read_stream(response, shot.abort_after_chunks, start)
            return _answer(await response.aread())
    except httpx.TransportError as error:
        # Before or during an answer: the connection broke (a router replica gone, say).
        return Entry(Outcome.CONNECTION_ERROR, detail=f"{type(error).__name__}: {error}"[:_QUOTE])


def classify_answer(status: int, headers: Mapping[str, str], body: bytes) -> Entry:
    """An answer read whole, of any operation (a fuzzer's): a 2xx is OK, unless it is a stream that
    ended with an error event (STREAM_ERROR) or without `data: [DONE]` (LOST); otherwise the
    refusal. `headers` by lower-case name."""
    if status >= 300:
        return _refusal(status, headers, body)
    if "text/event-stream" not in headers.get("content-type", ""):
        return Entry(Outcome.OK, status=status)
    for line in body.decode(errors="replace").splitlines():
        data = sse_data(line)
        if data is None:
            continue
        if data.strip() == "[DONE]":
            return Entry(Outcome.OK, status=status)
        try:
            error = json.loads(data).get("error")
        except (ValueError, AttributeError):
            return Entry(Outcome.LOST, status=status, detail=f"malformed chunk {data[:_QUOTE]!r}")
        if error is not None:
            return Entry(Outcome.STREAM_ERROR, status=status, detail=str(error)[:_QUOTE])
    return Entry(Outcome.LOST, status=status, detail="the stream closed before data: [DONE]")


def _refusal(status: int, headers: Mapping[str, str], body: bytes) -> Entry:
    outcome = {429: Outcome.RATE_LIMITED, 503: Outcome.UNAVAILABLE}.get(status)
    if outcome is None:
        outcome = Outcome.SERVER_ERROR if status >= 500 else Outcome.CLIENT_ERROR
    detail = f"HTTP {status}: {body[:_QUOTE].decode(errors='replace')}"
    error = _openai_error(body)
    defect = ""
    if status in (429, 503) and "retry-after" not in headers:
        defect = f"HTTP {status} without Retry-After"
    elif error is None:
        defect = f"HTTP {status} not in OpenAI's error shape: {body[:_QUOTE]!r}"
    code = str(error.get("code") or "") if error is not None else ""
    return Entry(outcome, status=status, defect=defect, detail=detail, code=code)


def _openai_error(body: bytes) -> dict[str, Any] | None:
    """The body's `error` object when it is in OpenAI's shape (a message and a type), else None."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str):
        return error
    return None


def _answer(body: bytes) -> Entry:
    try:
        answer = json.loads(body)
        tokens = int(answer["usage"]["completion_tokens"])
        complete = all(choice.get("finish_reason") for choice in answer["choices"])
    except (ValueError, KeyError, TypeError):
        return Entry(Outcome.LOST, status=200, detail=f"a 2xx body that is no completion: {body[:_QUOTE]!r}")
    if not complete:
        return Entry(Outcome.LOST, status=200, detail="a 2xx answer with a choice not finished")
    return Entry(Outcome.OK, tokens=tokens, status=200)


async def _read_stream(response: httpx.Response, abort_after_chunks: int | None, start: float) -> Entry:
    tokens, chunks, ttft_s = 0, 0, None
    finished = False
    async for line in response.aiter_lines():
        if abort_after_chunks is not None and chunks >= abort_after_chunks:
            return Entry(Outcome.ABORTED, tokens=tokens, ttft_s=ttft_s, status=200, detail=f"after {chunks} chunks")
        data = sse_data(line)
        if data is None:
            continue
        if data.strip() == "[DONE]":
            if finished:
                return Entry(Outcome.OK, tokens=tokens, ttft_s=ttft_s, status=200)
            return Entry(Outcome.LOST, tokens=tokens, status=200, detail="[DONE] before a finish_reason")
        chunks += 1
        try:
            chunk = json.loads(data)
        except ValueError:
            return Entry(Outcome.LOST, tokens=tokens, status=200, detail=f"malformed chunk {data[:_QUOTE]!r}")
        if chunk.get("error") is not None:
            return Entry(Outcome.STREAM_ERROR, tokens=tokens, status=200, detail=str(chunk["error"])[:_QUOTE])
        if chunk_text(chunk):
            tokens += 1
            if ttft_s is None:
                ttft_s = time.perf_counter() - start
        finished = finished or chunk_finish_reason(chunk) is not None
    return Entry(Outcome.LOST, tokens=tokens, status=200, detail="the stream closed before data: [DONE]")
