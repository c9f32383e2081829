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

The child exits when its socket closes: if this process dies, so does the engine. A child that
dies (or a step that fails) surfaces as `EngineDeadError` from the next call.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.core.tokenizer import load_tokenizer
from engine.errors import EngineDeadError
from engine.outputs import EngineStats, FinishReason, OutputHistory, RequestOutput, RequestTiming, ShardInfo
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from engine.core.llm_engine import LLMEngine, Prompt

__all__ = ["EngineProcess", "OutputDelta"]

logger = logging.getLogger(__name__)

# Seconds a stopping child may take to close its engine before it is killed.
_STOP_GRACE_S = 10.0


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

    One thread makes the calls (AsyncLLMEngine's engine thread); `check_health` and `close` may
    come from any thread.
    """

    def __init__(self, config: EngineConfig, num_threads: int | None = None) -> None:
        """`num_threads`: the child's torch intra-op threads (None: torch's default)."""
        ours, theirs = socket.socketpair()
        # The server's import path, which may hold more than its environment says (a runtime env).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engine.core.engine_process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._buffered: list[list[OutputDelta]] = []
        self._mirrors: dict[str, _Mirror] = {}
        try:
            self._conn.send((config, num_threads))
            ready = self._receive_reply()
        except BaseException:
            self.close()
            raise
        self.config: EngineConfig = ready.config
        self.context_limit: int = ready.context_limit
        self.tokenizer: PreTrainedTokenizerBase | None = load_tokenizer(config.tokenizer or config.model)

    # ----- the calls AsyncLLMEngine makes ----------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None) -> None:
        """As `LLMEngine.add_request`: a refused prompt raises its InvalidPromptError here."""
        prompt_token_ids = self._request(("add", request_id, prompt, params))
        self._mirrors[request_id] = _Mirror(prompt_token_ids, OutputHistory([], [], [], []))

    def abort_request(self, request_id: str) -> bool:
        """End a request; True if it was running or waiting (as far as this side knows)."""
        if self._mirrors.pop(request_id, None) is None:
            return False
        self._send(("abort", request_id))
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._mirrors)

    def step(self) -> list[RequestOutput]:
        """The outputs of the child's next step, and of any later ones already sent."""
        if not self._buffered:
            self._buffered.append(self._receive_outputs())
        while self._conn.poll():
            self._buffered.append(self._receive_outputs())
        deltas = [delta for batch in self._buffered for delta in batch]
        self._buffered.clear()
        return [output for output in map(self._output, deltas) if output is not None]

    def stats(self) -> EngineStats:
        return self._request(("call", "stats"))

    def shards(self) -> list[ShardInfo]:
        return self._request(("call", "shards"))

    def check_health(self) -> None:
        """Raise EngineDeadError if the engine process has exited."""
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
        try:
            self._conn.send(message)
        except OSError as error:
            raise self._dead() from error

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as error:
            raise self._dead() from error

    def _dead(self) -> EngineDeadError:
        try:
            code = self._process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            code = None
        return EngineDeadError(f"engine process is gone (exit code {code})")

    def _request(self, message: tuple[Any, ...]) -> Any:
        self._send(message)
        return self._receive_reply()

    def _receive_reply(self) -> Any:
        """The answer to the last request; step outputs that arrive first are kept for `step`."""
        while True:
            kind, payload = self._receive()
            if kind == "outputs":
                self._buffered.append(payload)
            elif kind == "reply":
                return payload
            elif kind == "error":
                raise payload
            else:  # "died": the step loop failed and the child is exiting
                raise EngineDeadError(f"engine step failed in the engine process: {payload}")

    def _receive_outputs(self) -> list[OutputDelta]:
        kind, payload = self._receive()
        if kind == "outputs":
            return payload
        if kind == "died":
            raise EngineDeadError(f"engine step failed in the engine process: {payload}")
        raise RuntimeError(f"engine process sent {kind!r} while no request was outstanding")

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
        )


# ----- the child ------------------------------------------------------------------------------


def _serve(engine: LLMEngine, conn: Connection) -> None:
    """Run commands between steps, and step while requests are unfinished, until told to stop."""
    while True:
        # Idle: wait for a command. Busy: take the commands that have arrived, then step.
        while not engine.has_unfinished_requests() or conn.poll():
            if not _run_command(engine, conn, conn.recv()):
                return
        try:
            outputs = engine.step()
        except Exception as error:  # noqa: BLE001 - reported to the server, then the child exits
            logger.exception("engine step failed")
            conn.send(("died", f"{type(error).__name__}: {error}"))
            raise
        conn.send(("outputs", [OutputDelta.of(output) for output in outputs]))


def _run_command(engine: LLMEngine, conn: Connection, message: tuple[Any, ...]) -> bool:
    """Run one command; False for "stop"."""
    kind = message[0]
    if kind == "stop":
        return False
    if kind == "abort":
        engine.abort_request(message[1])
        return True
    try:
        if kind == "add":
            _, request_id, prompt, params = message
            engine.add_request(request_id, prompt, params)
            value: Any = engine.scheduler.sequences[request_id].prompt_token_ids
        else:  # "call": a read-only engine method by name
            value = getattr(engine, message[1])()
    except Exception as error:  # noqa: BLE001 - raised again on the server's side
        _send_error(conn, error)
    else:
        conn.send(("reply", value))
    return True


def _send_error(conn: Connection, error: Exception) -> None:
    """Send an error to be raised on the server; one that cannot be pickled goes as its text."""
    try:
        conn.send(("error", error))
    except Exception:  # noqa: BLE001 - pickling can fail in any way
        conn.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


def _child_main(fd: int) -> int:
    conn = Connection(fd)
    config, num_threads = conn.recv()
    import torch

    from engine.core.llm_engine import LLMEngine

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        engine = LLMEngine(config)
    except Exception as error:  # noqa: BLE001 - raised again on the server's side
        _send_error(conn, error)
        return 1
    try:
        conn.send(("reply", _Ready(engine.config, engine.context_limit)))
        _serve(engine, conn)
    except (EOFError, OSError):
        logger.warning("engine process %d: the server is gone; exiting", os.getpid())
    except Exception:  # noqa: BLE001 - already reported by _serve
        return 1
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Through the package, not this __main__ module: the classes sent must unpickle on the server.
    from engine.core import engine_process

    sys.exit(engine_process._child_main(int(sys.argv[1])))
