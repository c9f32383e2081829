"""The serving layer's exceptions and their one mapping to OpenAI-shaped HTTP errors.

    ApiError                       an error a client sees: status, type, code, param, message
    ├── InvalidRequestError        400 invalid_request_error (a field is malformed or out of range)
    │   └── ContextLengthExceededError
    │                              400 code=context_length_exceeded (prompt + output > the model's context)
    ├── AuthenticationError        401 code=invalid_api_key (missing, unknown, expired or revoked key)
    ├── NotFoundError              404 no such thing (an admin API key id)
    │   └── ModelNotFoundError     404 the `model` names no deployed model (or none the tenant may use)
    ├── RequestTooLargeError       413 the body is larger than the router's max_body_bytes
    ├── OverloadedError            429 too many requests queued; Retry-After
    ├── RateLimitError             429 code=rate_limit_exceeded (a tenant's per-minute or concurrency
    │                              limit); Retry-After
    ├── QuotaExceededError         429 code=insufficient_quota (the tenant's budget is spent; do not retry)
    ├── ModelUnavailableError      503 no replica can take the request now (or its engine is
    │                              shutting down, or the tenants store is unreachable); Retry-After
    └── InternalServerError        500 anything else; the body carries no internals

Each class names its `rejection_reason`, the Router's metrics label for a refused request
(deployments.observability.router_metrics.REJECTION_REASONS); None for a server failure.

`to_api_error` turns any exception (ours, the engine's, Ray's or Serve's) into an ApiError; the
Router answers every failure through it and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from deployments.tenants.store import StoreUnavailableError
from engine import ContextLengthError as EngineContextLengthError
from engine import EngineError, EngineStoppedError, InvalidGrammarError, InvalidPromptError

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ContextLengthExceededError",
    "InternalServerError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotFoundError",
    "OverloadedError",
    "QuotaExceededError",
    "RateLimitError",
    "TokenRateLimitError",
    "RequestTooLargeError",
    "invalid_request",
    "to_api_error",
]

logger = logging.getLogger(__name__)

# Seconds a client is told to wait before retrying an overloaded or unavailable model.
DEFAULT_RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error with everything its HTTP answer needs."""

    status_code = 500
    error_type = "server_error"
    rejection_reason: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        # Headers the answer carries besides Retry-After (a tenant's x-ratelimit-* figures).
        self.extra_headers = extra_headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive pickling by default; errors cross Ray processes.
        return (_rebuild, (type(self), self.message, self.param, self.code, self.retry_after_s, self.extra_headers))

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        retry = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return self.extra_headers | retry


def _rebuild(
    cls: type[ApiError],
    message: str,
    param: str | None,
    code: str | None,
    retry_after_s: int | None,
    extra_headers: dict[str, str],
) -> ApiError:
    return cls(message, param=param, code=code, retry_after_s=retry_after_s, extra_headers=extra_headers)


class InvalidRequestError(ApiError):
    status_code = 400
    error_type = "invalid_request_error"
    rejection_reason = "bad_request"


class ContextLengthExceededError(InvalidRequestError):
    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "context_length_exceeded")
        super().__init__(message, **kwargs)


class AuthenticationError(ApiError):
    status_code = 401
    error_type = "invalid_request_error"
    rejection_reason = "bad_key"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "invalid_api_key")
        super().__init__(message, **kwargs)

    def headers(self) -> dict[str, str]:
        return super().headers() | {"WWW-Authenticate": "Bearer"}


class NotFoundError(ApiError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    rejection_reason = "model_not_found"

    @classmethod
    def for_model(cls, model: str, available: list[str]) -> ModelNotFoundError:
        return cls(
            f"The model {model!r} does not exist. Available models: {', '.join(sorted(available))}.",
            param="model",
            code="model_not_found",
        )


class RequestTooLargeError(ApiError):
    status_code = 413
    error_type = "invalid_request_error"
    rejection_reason = "bad_request"


class OverloadedError(ApiError):
    status_code = 429
    error_type = "rate_limit_error"
    rejection_reason = "queue_full"


class RateLimitError(ApiError):
    """A tenant's limit per minute or on concurrency; OpenAI's type says which ("requests" or "tokens")."""

    status_code = 429
    error_type = "requests"
    rejection_reason = "rate_limited"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "rate_limit_exceeded")
        super().__init__(message, **kwargs)


class TokenRateLimitError(RateLimitError):
    error_type = "tokens"


class QuotaExceededError(ApiError):
    """The budget is spent: OpenAI's insufficient_quota, which clients must not retry."""

    status_code = 429
    error_type = "insufficient_quota"
    rejection_reason = "over_budget"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "insufficient_quota")
        super().__init__(message, **kwargs)

    def headers(self) -> dict[str, str]:
        # The openai SDK retries a 429 unless told not to.
        return super().headers() | {"x-should-retry": "false"}


class ModelUnavailableError(ApiError):
    status_code = 503
    error_type = "service_unavailable_error"
    rejection_reason = "unavailable"


class InternalServerError(ApiError):
    status_code = 500
    error_type = "server_error"


def invalid_request(error: InvalidPromptError, prompt_param: str, structured_param: str) -> InvalidRequestError:
    """The engine refused a request's prompt or its structured output's grammar (its message
    names what is wrong); `structured_param` is the field that carried the grammar."""
    if isinstance(error, EngineContextLengthError):
        return ContextLengthExceededError(str(error), param=prompt_param)
    if isinstance(error, InvalidGrammarError):
        return InvalidRequestError(f"{structured_param}: {error}", param=structured_param)
    return InvalidRequestError(str(error))


def to_api_error(error: BaseException, *, model: str | None = None, user: str | None = None) -> ApiError:
    """The client-facing form of any failure. Unexpected failures are logged here, once, naming the
    model and the client's end user (OpenAI's `user`) when known."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApiError):
        return error
    return _map_foreign(error, model, user)


def _map_foreign(error: BaseException, model: str | None, user: str | None) -> ApiError:
    subject = f"model {model!r}" if model else "the model"
    if isinstance(error, BackPressureError):
        return OverloadedError(
            f"Too many requests are queued for {subject}; retry later.",
            code="too_many_requests",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        )
    if isinstance(error, (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError, EngineStoppedError)):
        return ModelUnavailableError(
            f"{subject[0].upper()}{subject[1:]} is temporarily unavailable; retry later.",
            code="model_unavailable",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        )
    if isinstance(error, StoreUnavailableError):
        logger.error("tenants store unreachable: %s", error)
        return ModelUnavailableError(
            "The API keys and limits store is unreachable, so no request can be admitted; retry later.",
            code="store_unavailable",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        )
    if isinstance(error, EngineError):
        logger.error("engine failure for %s (user %s): %r", subject, user, error)
        return InternalServerError(f"The engine serving {subject} failed; the request was not completed.")
    logger.error("unexpected failure for %s (user %s)", subject, user, exc_info=error)
    return InternalServerError("The server had an error while processing the request.")
