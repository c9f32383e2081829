"""The engine in a child process, driven through the calls `AsyncLLMEngine` makes of an `LLMEngine`.

    server process                                   engine process (python -m engine.core.engine_process)
    ───────────────────────────────────────────      ─────────────────────────────────────────────────────
    AsyncLLMEngine's engine thread                   LLMEngine
      add_request / abort / stats ── socket ──▶      runs them between steps
      step(): the next step's output deltas ◀──      steps back to back while requests are unfinished

A server's event loop, its RPC framework's threads and its serialization are Python: in one process
they hold the GIL that every op of the engine's forward needs back, so the model waits on the
serving work (and on the interpreter's 5 ms switch interval) even with a core free. In its own
process the step loop has an interpreter to itself; the server thread only moves small messages.

Only the news crosses: each step sends `OutputDelta`s (the new tokens, logprobs and text), and
this side rebuilds the `RequestOutput`s with their full history, so a message never grows with a
request's length. Prompts are validated in the child (its errors come back raised here), and the
tokenizer is loaded on both sides: here for the server's prompts, there for detokenizing.

With `on_stats`, the child's engine collects `StepStats`, which ride along with each message it
sends (a step's outputs, or a command's reply) and are handed to `on_stats` here, on the thread
that reads them.

The child exits when its socket closes: if this process dies, so does the engine. A child that
dies (or a step that fails) surfaces as `EngineDeadError` from the next call.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.core.sequence import DEFAULT_TENANT
from engine.core.tokenizer import load_tokenizer
from engine.errors import EngineDeadError
from engine.metrics.stats import StatsCallback, StepStats, never_raising
from engine.outputs import (
    EngineStats,
    FinishReason,
    OutputHistory,
    PromptLogprobEntry,
    RequestOutput,
    RequestTiming,
    ShardInfo,
)
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from engine.core.llm_engine import LLMEngine, Prompt

__all__ = ["EngineProcess", "OutputDelta"]

logger = logging.getLogger(__name__)

# Seconds a stopping child may take to close its engine before it is killed.
_STOP_GRACE_S = 10.0
# Most step messages one `step()` takes: a child that steps faster than this side reads must not
# keep outputs from the event loop (and commands from the child) for long.
_MAX_STEPS_PER_READ = 16
# What a command came to: (True, its value) or (False, the exception it raised).
Outcome = tuple[bool, Any]


@dataclass(frozen=True)
class OutputDelta:
    """What one step adds to one request: a `RequestOutput` without the prompt and history."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float]
    new_top_logprobs: list[list[tuple[int, float]]]
    delta_text: str
    finish_reason: FinishReason | None
    timing: RequestTiming
    num_generated_tokens: int
    num_cached_tokens: int
    new_prompt_logprobs: list[PromptLogprobEntry] | None

    @classmethod
    def of(cls, output: RequestOutput) -> OutputDelta:
        return cls(
            output.request_id,
            output.new_token_ids,
            output.new_logprobs,
            output.new_top_logprobs,
            output.delta_text,
            output.finish_reason,
            output.timing,
            output.num_generated_tokens,
            output.num_cached_tokens,
            output.new_prompt_logprobs,
        )


@dataclass(frozen=True)
class _Ready:
    """The child's answer once its engine is loaded."""

    config: EngineConfig  # with dtype "auto" resolved
    context_limit: int


@dataclass
class _Mirror:
    """This side's copy of a running request: its prompt and its history so far."""

    prompt_token_ids: list[int]
    history: OutputHistory


class EngineProcess:
    """An `LLMEngine` in a child process. Construction starts it and waits for its model to load.

    One thread makes the calls (AsyncLLMEngine's engine thread), `close` included; only
    `check_health` may come from any thread. Once the child is found dead, every call raises
    the same EngineDeadError.
    """

    def __init__(
        self, config: EngineConfig, num_threads: int | None = None, on_stats: StatsCallback | None = None
    ) -> None:
        """`num_threads`: the child's torch intra-op threads (None: torch's default); `on_stats`:
        as in `LLMEngine`, called here with the child's stats."""
        self._on_stats = never_raising(on_stats) if on_stats is not None else None
        self._outputs: list[RequestOutput] = []  # received, not yet returned by step()
        self._mirrors: dict[str, _Mirror] = {}
        self._died: EngineDeadError | None = None
        ours, theirs = socket.socketpair()
        # The server's import path, which may hold more than its environment says (a runtime env).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "engine.core.engine_process", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send((config, num_threads, on_stats is not None))
            ready = self._receive_reply()
            self.tokenizer: PreTrainedTokenizerBase | None = load_tokenizer(config.tokenizer or config.model)
        except BaseException:
            self.close()
            raise
        self.config: EngineConfig = ready.config
        self.context_limit: int = ready.context_limit

    # ----- the calls AsyncLLMEngine makes ----------------------------------------------------

    def run_commands(self, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome]:
        """Run engine methods by name, in order, in one round trip, all before the child's next
        step (so requests added together are admitted together): each outcome is (True, value)
        or (False, the exception)."""
        outcomes: list[Outcome] = self._request(("commands", commands))
        # In the order the child ran them: [abort x, add x] leaves the new x, [add x, abort x] none.
        # Outputs that arrived before the reply were applied already, to the requests they were of.
        for index, ((method, args), (ok, value)) in enumerate(zip(commands, outcomes, strict=True)):
            if method == "abort_request":
                self._mirrors.pop(args[0], None)
            elif method == "add_request" and ok:  # the child answered with the prompt's token ids
                self._mirrors[args[0]] = _Mirror(value, OutputHistory([], [], [], []))
                outcomes[index] = (True, None)
        return outcomes

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        tenant: str = DEFAULT_TENANT,
        tenant_weight: float = 1.0,
    ) -> None:
        """As `LLMEngine.add_request`: a refused prompt raises its InvalidPromptError here."""
        _unwrap(self.run_commands([("add_request", (request_id, prompt, params, tenant, tenant_weight))])[0])

    def abort_request(self, request_id: str) -> bool:
        """End a request; True if it was running or waiting."""
        return _unwrap(self.run_commands([("abort_request", (request_id,))])[0])

    def has_unfinished_requests(self) -> bool:
        # Outputs received while awaiting a command's reply wait in `_outputs` for `step`, even
        # the one that finished the last request: without them counted here, nobody would call
        # `step` again and that request's stream would wait forever.
        return bool(self._mirrors or self._outputs)

    def step(self) -> list[RequestOutput]:
        """The outputs of the child's next step, and of the few after it already sent."""
        if not self._outputs:
            self._receive_step()
        for _ in range(_MAX_STEPS_PER_READ - 1):
            if not self._conn.poll():
                break
            try:
                self._receive_step()
            except EngineDeadError:
                break  # hand over what arrived before the child died; the next call raises
        outputs, self._outputs = self._outputs, []
        return outputs

    def stats(self) -> EngineStats:
        return _unwrap(self.run_commands([("stats", ())])[0])

    def shards(self) -> list[ShardInfo]:
        return _unwrap(self.run_commands([("shards", ())])[0])

    def check_health(self) -> None:
        """Raise EngineDeadError if the engine process has exited."""
        if self._died is not None:
            raise self._died
        code = self._process.poll()
        if code is not None:
            raise EngineDeadError(f"engine process exited with code {code}")

    def close(self) -> None:
        """Stop the child (killed if it does not exit in time); idempotent."""
        if self._process.poll() is None:
            try:
                self._conn.send(("stop",))
            except OSError:
                pass  # it is already going
            try:
                self._process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._conn.close()

    # ----- messages -------------------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._died is not None:
            raise self._died
        try:
            self._conn.send(message)
        except OSError as error:
            raise self._die(None) from error

    def _receive(self) -> tuple[str, Any]:
        if self._died is not None:
            raise self._died
        try:
            kind, payload, stats = self._conn.recv()
        except (EOFError, OSError) as error:
            raise self._die(None) from error
        if self._on_stats is not None:
            for step_stats in stats:
                self._on_stats(step_stats)
        if kind == "died":  # the step loop failed and the child is exiting
            raise self._die(payload)
        return kind, payload

    def _die(self, reason: str | None) -> EngineDeadError:
        """Record the child's death (once) and return the error every later call raises."""
        if self._died is None:
            try:
                code: int | None = self._process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
            detail = f"engine step failed in the engine process: {reason}" if reason else "engine process is gone"
            self._died = EngineDeadError(f"{detail} (exit code {code})")
        return self._died

    def _request(self, message: tuple[Any, ...]) -> Any:
        self._send(message)
        return self._receive_reply()

    def _receive_reply(self) -> Any:
        """The answer to the last request; step outputs that arrive first are kept for `step`."""
        while True:
            kind, payload = self._receive()
            if kind == "outputs":
                self._take_outputs(payload)
            elif kind == "reply":
                return payload
            else:  # "error": the child could not start its engine
                raise payload

    def _receive_step(self) -> None:
        kind, payload = self._receive()
        if kind != "outputs":
            raise RuntimeError(f"engine process sent {kind!r} while no request was outstanding")
        self._take_outputs(payload)

    def _take_outputs(self, deltas: list[OutputDelta]) -> None:
        """Apply deltas to their requests as they arrive (so a request id aborted and added again
        never gets its predecessor's tokens)."""
        self._outputs.extend(output for output in map(self._output, deltas) if output is not None)

    def _output(self, delta: OutputDelta) -> RequestOutput | None:
        """The full RequestOutput of a delta; None for a request aborted since its step."""
        mirror = self._mirrors.get(delta.request_id)
        if mirror is None:
            return None
        history = mirror.history
        history.token_ids.extend(delta.new_token_ids)
        history.logprobs.extend(delta.new_logprobs)
        history.top_logprobs.extend(delta.new_top_logprobs)
        if delta.delta_text:
            history.text_pieces.append(delta.delta_text)
        if delta.new_prompt_logprobs is not None:
            history.prompt_logprobs.extend(delta.new_prompt_logprobs)
        if delta.finish_reason is not None:
            del self._mirrors[delta.request_id]
        return RequestOutput(
            request_id=delta.request_id,
            prompt_token_ids=mirror.prompt_token_ids,
            new_token_ids=delta.new_token_ids,
            new_logprobs=delta.new_logprobs,
            new_top_logprobs=delta.new_top_logprobs,
            delta_text=delta.delta_text,
            finish_reason=delta.finish_reason,
            timing=delta.timing,
            num_generated_tokens=delta.num_generated_tokens,
            num_cached_tokens=delta.num_cached_tokens,
            history=history,
            num_text_pieces=len(history.text_pieces),
            new_prompt_logprobs=delta.new_prompt_logprobs,
        )


# ----- the child ------------------------------------------------------------------------------


def _add(
    engine: LLMEngine,
    request_id: str,
    prompt: Prompt,
    params: SamplingParams | None,
    tenant: str = DEFAULT_TENANT,
    tenant_weight: float = 1.0,
) -> list[int]:
    return engine.add_request(request_id, prompt, params, tenant, tenant_weight)


# The engine methods a server may call, with what the child answers for each. A command's args are
# the method's positional args: add_request's are (request_id, prompt, params, tenant, tenant_weight),
# the last two optional.
_COMMANDS: dict[str, Callable[..., Any]] = {
    "add_request": _add,
    "abort_request": lambda engine, request_id: engine.abort_request(request_id),
    "stats": lambda engine: engine.stats(),
    "shards": lambda engine: engine.shards(),
}


class _StepFailed(Exception):
    """A step raised: reported to the server as "died", then the child exits non-zero."""


def _unwrap(outcome: Outcome) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _serve(engine: LLMEngine, conn: Connection, stats: list[StepStats]) -> None:
    """Run commands between steps, and step while requests are unfinished, until told to stop.
    `stats`: where the engine's on_stats puts its StepStats; each message takes them along."""

    def send(kind: str, payload: Any) -> None:
        conn.send((kind, payload, stats[:]))
        stats.clear()

    while True:
        # Idle: wait for a command. Busy: take the commands that have arrived, then step.
        while not engine.has_unfinished_requests() or conn.poll():
            message = conn.recv()
            if message[0] == "stop":
                return
            send("reply", [_run(engine, method, args) for method, args in message[1]])
        try:
            outputs = engine.step()
        except Exception as error:
            logger.exception("engine step failed")
            send("died", f"{type(error).__name__}: {error}")
            raise _StepFailed from error
        send("outputs", [OutputDelta.of(output) for output in outputs])


def _run(engine: LLMEngine, method: str, args: tuple[Any, ...]) -> Outcome:
    try:
        return True, _COMMANDS[method](engine, *args)
    except Exception as error:  # noqa: BLE001 - raised again on the server's side
        return False, _picklable(error)


def _picklable(error: Exception) -> Exception:
    """The error itself if it survives the trip to the server, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - pickling can fail in any way
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends SIGKILL when the server dies, even mid-load or mid-step."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(1)


def _child_main(fd: int, parent_pid: int) -> int:
    _die_with_parent(parent_pid)
    # Ctrl-C of a `serve run` reaches the whole process group: the server decides, not the child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    config, num_threads, collects_stats = conn.recv()
    import torch

    from engine.core.llm_engine import LLMEngine

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    stats: list[StepStats] = []
    try:
        engine = LLMEngine(config, on_stats=stats.append if collects_stats else None)
    except Exception as error:  # noqa: BLE001 - raised again on the server's side
        conn.send(("error", _picklable(error), []))
        return 1
    try:
        conn.send(("reply", _Ready(engine.config, engine.context_limit), []))
        _serve(engine, conn, stats)
    except _StepFailed:
        return 1
    except (EOFError, OSError):
        logger.warning("engine process %d: the server is gone; exiting", os.getpid())
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Through the package, not this __main__ module: the classes sent must unpickle on the server.
    from engine.core import engine_process

    sys.exit(engine_process._child_main(int(sys.argv[1]), int(sys.argv[2])))
