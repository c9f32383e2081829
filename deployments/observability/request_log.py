"""One structured line per request, and the Router's metrics of it: `RequestRecord.finish`, once.

    {"event": "request", "request_id": "chatcmpl-...", "serve_request_id": "...", "model": "demo",
     "endpoint": "chat", "tenant": "team-a", "key_id": "k1", "status": 200, "prompt_tokens": 12,
     "completion_tokens": 32, "cached_tokens": 0, "ttft_s": 0.041, "e2e_s": 0.52,
     "finish_reason": "length", "error_code": null}

Never the prompt, the completion or a key: only ids and counts. `serve_request_id` is the id Ray
Serve gives the HTTP request (the `x-request-id` response header, and the id in Serve's own log
lines), so a line can be matched with the proxy's and replica's logs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from deployments.errors import ApiError
from deployments.ingress.responses import ResponseWriter
from deployments.ingress.serve_context import serve_request_id
from deployments.observability.router_recorder import RouterMetrics

__all__ = ["CLIENT_CLOSED", "OTHER_MODEL", "RequestRecord"]

# Serve's logger: the line lands in the Router replica's log with Serve's request id.
logger = logging.getLogger("ray.serve")

# The status of a request whose client left before its answer ended (nginx's "client closed request").
CLIENT_CLOSED = 499
# The `model` label of a request that named no deployed model: a client cannot add series to the
# metrics by inventing model names.
OTHER_MODEL = "_other"  # not a valid model name (config refuses a leading underscore)


@dataclass
class RequestRecord:
    """What is known of one request as it goes; `finish` counts and logs it (only the first call)."""

    endpoint: str
    metrics: RouterMetrics | None = None
    started: float = field(default_factory=time.monotonic)
    serve_request_id: str = field(default_factory=serve_request_id)
    request_id: str | None = None
    # The model the request named (None: no body could be read), and whether it is deployed.
    model: str | None = None
    model_is_deployed: bool = False
    # A streamed request's first chunk is its first token; a whole one's comes at its end.
    stream: bool = False
    tenant: str | None = None
    key_id: str | None = None
    _finished: bool = False

    def finish(self, status_code: int, writer: ResponseWriter | None = None, error: ApiError | None = None) -> None:
        """The request ended with `status_code` (for a stream that failed after its 200, the
        failure's status; CLIENT_CLOSED when the client left first)."""
        if self._finished:
            return
        self._finished = True
        e2e_s = time.monotonic() - self.started
        started_answering = writer is not None and writer.first_chunk_at is not None
        ttft_s = None
        if self.stream and writer is not None and writer.first_chunk_at is not None:
            ttft_s = writer.first_chunk_at - self.started
        # A failure after the first chunk is an error, not a refusal.
        rejection_reason = error.rejection_reason if error is not None and not started_answering else None
        if self.metrics is not None:
            try:
                self.metrics.request_finished(
                    model=self._model_label(),
                    endpoint=self.endpoint,
                    status_code=status_code,
                    tenant=self.tenant,
                    rejection_reason=rejection_reason,
                    duration_s=e2e_s,
                    ttft_s=ttft_s,
                )
            except Exception:  # noqa: BLE001 - metrics are advisory: the request's end goes on
                logger.exception("recording the Router's metrics of %s failed", self.request_id)
        logger.info(json.dumps(self._line(status_code, writer, error, ttft_s, e2e_s), separators=(",", ":")))

    def _model_label(self) -> str:
        if self.model is None:
            return ""
        return self.model if self.model_is_deployed else OTHER_MODEL

    def _line(
        self,
        status_code: int,
        writer: ResponseWriter | None,
        error: ApiError | None,
        ttft_s: float | None,
        e2e_s: float,
    ) -> dict[str, object]:
        finish_reasons = (
            sorted({choice.finish_reason for choice in writer.choices if choice.finish_reason}) if writer else []
        )
        return {
            "event": "request",
            "request_id": self.request_id,
            "serve_request_id": self.serve_request_id,
            "model": self.model,
            "endpoint": self.endpoint,
            "tenant": self.tenant,
            "key_id": self.key_id,
            "status": status_code,
            "prompt_tokens": writer.num_prompt_tokens if writer else 0,
            "completion_tokens": writer.num_generated_tokens if writer else 0,
            "cached_tokens": writer.num_cached_tokens if writer else 0,
            "ttft_s": None if ttft_s is None else round(ttft_s, 4),
            "e2e_s": round(e2e_s, 4),
            "finish_reason": ",".join(finish_reasons) or None,
            "error_code": (error.code or error.error_type) if error is not None else None,
        }
