"""A Router replica's bound on one model's requests, decided before the request's first await.

Serve refuses a request with BackPressureError once `max_queued_requests` wait in the caller's
queue, but it says so only when the request is assigned, after awaits. A Router whose event loop is
behind (under overload it is) reaches that answer seconds later, when a stream may have been
answered 200 already (its keep-alive comments started): the refusal then arrives as an error event
instead of a 429 the client's retry logic understands. So the Router counts the model's requests it
holds and refuses one beyond its share of what the model's replicas run (they are shared by every
Router replica) plus its queue bound (Serve's is per caller) at once, where the request arrives;
Serve's own check then rarely fires.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, TypeVar

from deployments.errors import DEFAULT_RETRY_AFTER_S, OverloadedError

__all__ = ["Admission"]

T = TypeVar("T")


class Admission:
    """Requests this Router replica holds for one model, and their bound."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.held = 0

    def admit(self, stream: AsyncGenerator[T, None], limit: int | None) -> AsyncGenerator[T, None]:
        """`stream`, counted until it ends or is closed; OverloadedError (429) when `limit` requests
        are held already (None: no bound)."""
        if limit is not None and self.held >= limit:
            raise OverloadedError(
                f"Too many requests are queued for model {self.model!r}; retry later.",
                code="too_many_requests",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            )
        self.held += 1
        return _HeldStream(stream, self._release)

    def _release(self) -> None:
        self.held -= 1


class _HeldStream(AsyncGenerator[T, None]):
    """An async generator that calls `release` once: when it ends, fails, is closed, or is dropped
    unstarted (a generator that never ran has no `finally` of its own to run)."""

    def __init__(self, stream: AsyncGenerator[T, None], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def _release_once(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    async def asend(self, value: None) -> T:
        try:
            return await self._stream.asend(value)
        except BaseException:
            self._release_once()
            raise

    async def athrow(  # type: ignore[override]
        self, typ: Any, value: BaseException | None = None, traceback: TracebackType | None = None
    ) -> T:
        try:
            return await self._stream.athrow(typ, value, traceback)
        except BaseException:
            self._release_once()
            raise

    async def aclose(self) -> None:
        self._release_once()
        await self._stream.aclose()

    def __del__(self) -> None:
        self._release_once()
