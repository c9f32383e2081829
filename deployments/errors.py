"""The serving layer's exceptions and their one mapping to OpenAI-shaped HTTP errors.

    ApiError                       an error a client sees: status, type, code, param, message
    ├── InvalidRequestError        400 invalid_request_error (a field is malformed or out of range)
    │   └── ContextLengthExceededError
    │                              400 code=context_length_exceeded (prompt + output > the model's context)
    ├── ModelNotFoundError         404 the `model` names no deployed model
    ├── RequestTooLargeError       413 the body is larger than the router's max_body_bytes
    ├── OverloadedError            429 too many requests queued; Retry-After
    ├── ModelUnavailableError      503 no replica can take the request now (or its engine is
    │                              shutting down); Retry-After
    └── InternalServerError        500 anything else; the body carries no internals

`to_api_error` turns any exception (ours, the engine's, Ray's or Serve's) into an ApiError; the
Router answers every failure through it and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from engine import ContextLengthError as EngineContextLengthError
from engine import EngineError, EngineStoppedError, InvalidPromptError

__all__ = [
    "ApiError",
    "ContextLengthExceededError",
    "InternalServerError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "OverloadedError",
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

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive pickling by default; errors cross Ray processes.
        return (_rebuild, (type(self), self.message, self.param, self.code, self.retry_after_s))

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


def _rebuild(
    cls: type[ApiError], message: str, param: str | None, code: str | None, retry_after_s: int | None
) -> ApiError:
    return cls(message, param=param, code=code, retry_after_s=retry_after_s)


class InvalidRequestError(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "context_length_exceeded")
        super().__init__(message, **kwargs)


class ModelNotFoundError(ApiError):
    status_code = 404
    error_type = "invalid_request_error"

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


class OverloadedError(ApiError):
    status_code = 429
    error_type = "rate_limit_error"


class ModelUnavailableError(ApiError):
    status_code = 503
    error_type = "service_unavailable_error"


class InternalServerError(ApiError):
    status_code = 500
    error_type = "server_error"


def invalid_request(error: InvalidPromptError, prompt_param: str) -> InvalidRequestError:
    """The engine refused a request's prompt (its message names what is wrong)."""
    if isinstance(error, EngineContextLengthError):
        return ContextLengthExceededError(str(error), param=prompt_param)
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
    if isinstance(error, EngineError):
        logger.error("engine failure for %s (user %s): %r", subject, user, error)
        return InternalServerError(f"The engine serving {subject} failed; the request was not completed.")
    logger.error("unexpected failure for %s (user %s)", subject, user, exc_info=error)
    return InternalServerError("The server had an error while processing the request.")
