"""The engine driven by a background loop, for servers: requests stream back as async iterators.

All engine calls (load, add, abort, step, stats) run on one dedicated thread, in order, so the
event loop never blocks on a forward pass and the engine never sees two callers at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from engine.config import EngineConfig
from engine.errors import EngineDeadError
from engine.llm_engine import LLMEngine, Prompt
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams

__all__ = ["AsyncLLMEngine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncLLMEngine:
    """Construct, then `await start()`; `generate` yields one `RequestOutput` delta per step.

    Cancelling or closing a `generate` iterator aborts its request and frees its KV blocks.
    A failing step ends every request in flight with `EngineDeadError`; the engine then refuses
    new work and `check_health` raises, so its owner can replace it.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.engine: LLMEngine | None = None
        self.load_seconds: float | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._pending_aborts: set[str] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._dead: BaseException | None = None

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> AsyncLLMEngine:
        """Wrap an engine that is already loaded; call `start()` before use."""
        async_engine = cls(engine.config)
        async_engine.engine = engine
        return async_engine

    async def start(self, timeout_s: float | None = None) -> None:
        """Load the model (unless wrapped) and start the step loop."""
        if self.engine is None:
            started = time.perf_counter()
            self.engine = await asyncio.wait_for(self._on_engine_thread(LLMEngine, self.config), timeout_s)
            self.load_seconds = time.perf_counter() - started
            logger.info("engine for %s started in %.1fs", self.config.model, self.load_seconds)
        self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())

    async def shutdown(self) -> None:
        """Stop the step loop and wait for the engine thread to finish its current call."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        self._thread.shutdown(wait=True)

    def close(self) -> None:
        """Stop without waiting, from synchronous code (a destructor); requests in flight end."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, request_id: str, prompt: Prompt, params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas. Bad input raises ValueError before anything is yielded."""
        self._raise_if_dead()
        if request_id in self._streams:
            raise ValueError(f"request_id must be unique, {request_id!r} is already running")
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request_id] = stream
        try:
            await self._on_engine_thread(self._require_engine().add_request, request_id, prompt, params)
        except BaseException:
            del self._streams[request_id]
            raise
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._abort_later(request_id)

    async def abort(self, request_id: str) -> None:
        """End a request; its iterator stops receiving deltas."""
        self._abort_later(request_id)

    async def stats(self) -> EngineStats:
        return await self._on_engine_thread(self._require_engine().stats)

    def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        self._raise_if_dead()
        if self._loop_task is None or self._loop_task.done():
            raise EngineDeadError("engine loop is not running")

    # ----- the loop -----------------------------------------------------------------------

    def _abort_later(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self._pending_aborts.add(request_id)
            self._wake.set()

    async def _run_loop(self) -> None:
        engine = self._require_engine()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending_aborts or engine.has_unfinished_requests():
                aborts, self._pending_aborts = self._pending_aborts, set()
                try:
                    outputs = await self._on_engine_thread(self._abort_and_step, engine, aborts)
                except Exception as error:  # noqa: BLE001 - any step failure ends the engine
                    self._die(error)
                    return
                self._deliver(outputs)

    @staticmethod
    def _abort_and_step(engine: LLMEngine, aborts: set[str]) -> list[RequestOutput]:
        for request_id in aborts:
            engine.abort_request(request_id)
        return engine.step() if engine.has_unfinished_requests() else []

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue  # its consumer left; the abort is pending
            stream.put_nowait(output)
            if output.finished:
                del self._streams[output.request_id]

    def _die(self, error: Exception) -> None:
        logger.exception("engine step failed; ending %d requests", len(self._streams), exc_info=error)
        self._dead = error
        dead = EngineDeadError(f"engine step failed: {type(error).__name__}")
        for stream in self._streams.values():
            stream.put_nowait(dead)
        self._streams.clear()

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"engine step failed: {type(self._dead).__name__}")

    def _require_engine(self) -> LLMEngine:
        if self.engine is None:
            raise EngineDeadError("engine is not started: call `await start()` first")
        return self.engine

    async def _on_engine_thread(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
