"""The engine driven by its own thread, for servers: requests stream back as async iterators.

    event loop (callers)                         engine thread
    ─────────────────────                        ─────────────────────────────────────────
    generate() ── add_request command ──▶        runs queued commands (add, abort, stats)
                                                 step() while requests are unfinished
    per-request mailboxes ◀─ call_soon_threadsafe ─ outputs of each step
    generate() yields deltas                     sleeps when idle, until a command arrives

The engine thread steps back to back without waiting for the event loop, so the time the loop
spends streaming outputs never idles the model; the loop never blocks on a forward pass; and the
engine only ever sees one caller, its own thread. A consumer that reads slower than the engine
steps finds the steps it missed merged into one delta, and is woken once rather than per step.

With `engine_process=True` the engine thread drives an `EngineProcess` instead: the model and its
step loop run in a child process, and the thread only passes commands and output deltas, so the
event loop's Python and the forward pass no longer take turns on one GIL.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.core.engine_process import EngineProcess
from engine.core.llm_engine import LLMEngine, Prompt
from engine.core.sequence import DEFAULT_TENANT
from engine.errors import EngineDeadError, EngineError, EngineStoppedError
from engine.metrics.stats import StatsCallback, StepStats, never_raising
from engine.outputs import EngineStats, RequestOutput, ShardInfo
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["AsyncLLMEngine"]

logger = logging.getLogger(__name__)


class _Mailbox:
    """One request's undelivered output: consecutive deltas merge while nobody reads."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.pending: RequestOutput | EngineError | None = None
        self.ready = asyncio.Event()
        # Set when the pending item ends the stream (the last output, or an error).
        self.ending = asyncio.Event()

    def put(self, item: RequestOutput | EngineError) -> None:
        if isinstance(self.pending, RequestOutput) and isinstance(item, RequestOutput):
            item = item.following(self.pending)
        self.pending = item
        self.ready.set()
        if not isinstance(item, RequestOutput) or item.finished:
            self.ending.set()

    async def take(self, not_before: float | None) -> RequestOutput | EngineError:
        """The pending item, once there is one and the loop clock reaches `not_before`; an item
        that ends the stream is taken at once. `not_before=None` takes only such an item."""
        if not_before is None:
            await self.ending.wait()
        await self.ready.wait()
        wait_s = 0.0 if not_before is None else not_before - asyncio.get_running_loop().time()
        if wait_s > 0 and not self.ending.is_set():
            try:
                await asyncio.wait_for(self.ending.wait(), wait_s)
            except asyncio.TimeoutError:  # the interval is over: take what merged meanwhile
                pass
        self.ready.clear()
        item, self.pending = self.pending, None
        assert item is not None  # `ready` is set only with something pending
        return item


@dataclass
class _Command:
    """A call the engine thread makes between steps; its result (or error) lands in `result`."""

    # The engine method to call, by name (the same on LLMEngine and EngineProcess).
    method: str
    args: tuple[Any, ...]
    # None for fire-and-forget commands (aborts).
    result: Future[Any] | None


class AsyncLLMEngine:
    """Construct, then `await start()`; `generate` yields `RequestOutput` deltas as steps finish
    (several steps merged into one delta when the consumer reads slower than the engine steps).

    Cancelling or closing a `generate` iterator aborts its request and frees its KV blocks.
    A failing step ends every request in flight with `EngineDeadError`; the engine then refuses
    new work and `check_health` raises, so its owner can replace it. After `shutdown()` (or a
    failed start) requests end, and calls fail, with `EngineStoppedError`.
    """

    def __init__(
        self,
        config: EngineConfig,
        engine_process: bool = False,
        num_threads: int | None = None,
        on_stats: StatsCallback | None = None,
    ) -> None:
        """`engine_process`: run the model in a child process (`EngineProcess`) rather than in this
        one, so this process's Python never holds the step loop's GIL; `num_threads`: its torch
        threads (in process, the caller sets them); `on_stats`: as in `LLMEngine` (called on the
        engine thread), plus one call on the event loop, with `errored`, when a failed step ends
        the requests in flight."""
        self.config = config
        self.on_stats = on_stats
        self._report_errored = never_raising(on_stats) if on_stats is not None else None
        self.engine_process = engine_process
        self.num_threads = num_threads
        self.engine: LLMEngine | EngineProcess | None = None
        self.load_seconds: float | None = None
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Commands are accepted only while the engine thread will still run them.
        self._accepting = False
        self._accepting_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, _Mailbox] = {}
        self._dead: BaseException | None = None

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> AsyncLLMEngine:
        """Wrap an engine that is already loaded (its `on_stats` also gets the failed-step report);
        call `start()` before use."""
        async_engine = cls(engine.config, on_stats=engine.on_stats)
        async_engine.engine = engine
        return async_engine

    async def start(self, timeout_s: float | None = None) -> None:
        """Start the engine thread; it loads the model first (unless wrapped)."""
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(loaded,), name="engine", daemon=True)
        started = time.perf_counter()
        self._thread.start()
        await asyncio.wait_for(asyncio.wrap_future(loaded), timeout_s)
        if self.load_seconds is None:
            self.load_seconds = time.perf_counter() - started
            logger.info("engine for %s started in %.1fs", self.config.model, self.load_seconds)

    async def shutdown(self) -> None:
        """Stop the engine thread and wait for it to finish its current step."""
        thread = self._stop()
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def close(self) -> None:
        """Stop without waiting, from synchronous code (a destructor)."""
        self._stop()

    async def generate(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        stream_interval_s: float | None = 0.0,
        *,
        tenant: str = DEFAULT_TENANT,
        tenant_weight: float = 1.0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas. A refused prompt raises InvalidPromptError before anything
        is yielded. `tenant` and `tenant_weight` are as in `LLMEngine.add_request`.

        With `stream_interval_s`, deltas come at most once per interval, each merging the steps
        since the last (the first delta and the final one come as soon as they exist). None
        yields one output only, when the request finishes, merging all its steps.
        """
        self._raise_if_dead()
        if request_id in self._streams:
            raise ValueError(f"request_id must be unique, {request_id!r} is already running")
        stream = _Mailbox(tenant)
        self._streams[request_id] = stream
        try:
            await self._call("add_request", request_id, prompt, params, tenant, tenant_weight)
        except BaseException:
            # Refused (nothing was added), or cancelled while the add was queued or running: an
            # abort covers the case where it was added after all.
            self._abort_later(request_id)
            raise
        loop = asyncio.get_running_loop()
        not_before = None if stream_interval_s is None else loop.time()
        finished = False
        try:
            while not finished:
                item = await stream.take(not_before)
                if isinstance(item, EngineError):
                    raise item
                finished = item.finished
                # The interval starts at visible news: a delta without text yet (a partial
                # character, text held back for a stop string) lets the next one through at once.
                if stream_interval_s is not None and (item.delta_text or self._has_no_tokenizer()):
                    not_before = loop.time() + stream_interval_s
                yield item
        finally:
            if not finished:
                self._abort_later(request_id)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The model's tokenizer (None: prompts must be token ids). Only once started."""
        return self._loaded().tokenizer

    @property
    def context_limit(self) -> int:
        """The most tokens (prompt + max_tokens) one request can ever have. Only once started."""
        return self._loaded().context_limit

    async def stats(self) -> EngineStats:
        return await self._call("stats")

    async def shards(self) -> list[ShardInfo]:
        return await self._call("shards")

    async def check_health(self) -> None:
        """Raise if the engine cannot serve: it died, stopped, or lost a tensor-parallel shard."""
        self._raise_if_dead()
        if not self._accepting or self._thread is None or not self._thread.is_alive() or self.engine is None:
            raise EngineStoppedError("engine thread is not running")
        await asyncio.to_thread(self.engine.check_health)

    # ----- event loop side ----------------------------------------------------------------

    async def _call(self, method: str, *args: object) -> Any:
        """Run the engine's `method(*args)` on the engine thread, between steps."""
        self._raise_if_dead()
        result: Future[Any] = Future()
        with self._accepting_lock:
            if not self._accepting:
                raise EngineStoppedError("engine is not running")
            self._commands.put(_Command(method, args, result))
        self._wake.set()
        return await asyncio.wrap_future(result)

    def _abort_later(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self._commands.put(_Command("abort_request", (request_id,), None))
            self._wake.set()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue  # its consumer left; the abort is queued
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]

    def _die(self, error: BaseException) -> None:
        logger.error("engine step failed; ending %d requests", len(self._streams), exc_info=error)
        self._dead = error
        errored: dict[str, int] = {}
        for stream in self._streams.values():
            errored[stream.tenant] = errored.get(stream.tenant, 0) + 1
        self._end_streams(EngineDeadError(f"engine step failed: {type(error).__name__}"))
        if self._report_errored is not None:
            self._report_errored(StepStats(errored=errored))

    def _end_streams(self, error: EngineError) -> None:
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()

    def _has_no_tokenizer(self) -> bool:
        return self.engine is not None and self.engine.tokenizer is None

    def _loaded(self) -> LLMEngine | EngineProcess:
        if self.engine is None:
            raise EngineStoppedError("engine is not started")
        return self.engine

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"engine step failed: {type(self._dead).__name__}")

    def _stop(self) -> threading.Thread | None:
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        return thread

    # ----- engine thread ------------------------------------------------------------------

    def _run(self, loaded: Future[None]) -> None:
        try:
            if self.engine is None:
                self.engine = self._load()
        except BaseException as error:  # noqa: BLE001 - the starter raises it
            self._stop_accepting(EngineStoppedError(f"engine failed to load: {type(error).__name__}"))
            _settle(loaded, error=error)
            return
        try:
            self._serve(self.engine, loaded)
        finally:
            self.engine.close()

    def _load(self) -> LLMEngine | EngineProcess:
        if self.engine_process:
            return EngineProcess(self.config, self.num_threads, self.on_stats)
        return LLMEngine(self.config, self.on_stats)

    def _serve(self, engine: LLMEngine | EngineProcess, loaded: Future[None]) -> None:
        """Step until stopped or a step fails; returns with the engine no longer accepting work."""
        if not _settle(loaded, value=None):  # start() gave up waiting: nobody will use this engine
            self._stop_accepting(EngineStoppedError("engine start timed out"))
            return
        while True:
            # Clear before checking, so a stop or a command arriving after the check still wakes us.
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._run_commands(engine)
            except EngineDeadError as error:  # the engine process died between steps
                self._to_loop(self._die, error)
                self._stop_accepting(error)
                return
            if not engine.has_unfinished_requests():
                self._wake.wait()
                continue
            try:
                outputs = engine.step()
            except Exception as error:  # noqa: BLE001 - any step failure ends the engine
                self._to_loop(self._die, error)
                self._stop_accepting(EngineDeadError(f"engine step failed: {type(error).__name__}"))
                return
            if outputs:
                self._to_loop(self._deliver, outputs)
        stopped = EngineStoppedError("engine is shut down")
        self._to_loop(self._end_streams, stopped)
        self._stop_accepting(stopped)

    def _run_commands(self, engine: LLMEngine | EngineProcess) -> None:
        """Run every queued command before the next step; an engine process gets them in one
        message, so requests queued together are admitted together. EngineDeadError from an
        engine process is raised after its commands' callers got it."""
        commands = []
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command.result is None or command.result.set_running_or_notify_cancel():
                commands.append(command)  # else its caller was cancelled before it ran
        if not commands:
            return
        if isinstance(engine, EngineProcess):
            try:
                outcomes = engine.run_commands([(command.method, command.args) for command in commands])
            except EngineDeadError as error:
                for command in commands:
                    if command.result is not None:
                        command.result.set_exception(error)
                raise
        else:
            outcomes = [_outcome(engine, command) for command in commands]
        for command, (ok, value) in zip(commands, outcomes, strict=True):
            if command.result is None:
                continue
            if ok:
                command.result.set_result(value)
            else:
                command.result.set_exception(value)

    def _stop_accepting(self, error: Exception) -> None:
        """Refuse new commands, and fail the ones that will never run."""
        with self._accepting_lock:
            self._accepting = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command.result is not None:
                _settle(command.result, error=error)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None  # set by start() before the thread runs
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the event loop is closed: nobody is left to tell


def _outcome(engine: LLMEngine, command: _Command) -> tuple[bool, Any]:
    try:
        return True, getattr(engine, command.method)(*command.args)
    except Exception as error:  # noqa: BLE001 - handed to the caller
        return False, error


def _settle(future: Future[Any], *, value: object = None, error: BaseException | None = None) -> bool:
    """Resolve `future` unless its waiter cancelled it; False if it was cancelled."""
    if not future.set_running_or_notify_cancel():
        return False
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
    return True
