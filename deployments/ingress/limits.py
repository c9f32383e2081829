"""What one request may ask for (`RequestLimits`), enforced before any engine work.

The body is read at most `max_body_bytes` far (a larger one is 413, however it is sent); `n` and
`stop` are bounded because each choice is an engine sequence and each stop string is searched at
every engine step, on the engine's one thread.
"""

from __future__ import annotations

from starlette.requests import Request

from deployments.config import RequestLimits
from deployments.errors import InvalidRequestError, RequestTooLargeError
from deployments.ingress.protocol import CompletionRequest, SamplingFields

__all__ = ["check_request_limits", "read_body"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 once it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(part)
    return b"".join(parts)


def check_request_limits(body: SamplingFields, limits: RequestLimits) -> None:
    """Raise InvalidRequestError naming the limit a parsed body exceeds."""
    num_prompts = len(body.prompts) if isinstance(body, CompletionRequest) else 1
    if num_prompts > limits.max_prompts:
        raise InvalidRequestError(
            f"prompt may hold at most {limits.max_prompts} prompts (this server's max_prompts), got {num_prompts}",
            param="prompt",
            code="limit_exceeded",
        )
    if body.n > limits.max_n:
        raise InvalidRequestError(
            f"n must be <= {limits.max_n} (this server's max_n), got {body.n}", param="n", code="limit_exceeded"
        )
    stops = body.stop_strings
    if len(stops) > limits.max_stop_sequences:
        raise InvalidRequestError(
            f"stop may hold at most {limits.max_stop_sequences} strings (this server's max_stop_sequences), got "
            f"{len(stops)}",
            param="stop",
            code="limit_exceeded",
        )
    longest = max((len(stop) for stop in stops), default=0)
    if longest > limits.max_stop_chars:
        raise InvalidRequestError(
            f"each stop string must be at most {limits.max_stop_chars} characters (this server's max_stop_chars), "
            f"got {longest}",
            param="stop",
            code="limit_exceeded",
        )


def _too_large(max_bytes: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"The request body is larger than this server's max_body_bytes ({max_bytes} bytes).",
        code="request_too_large",
    )
