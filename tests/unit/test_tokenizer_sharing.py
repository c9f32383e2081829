"""One fast tokenizer is shared by a replica's engine thread, its worker threads and its event loop.

Hugging Face fast tokenizers keep truncation and padding as state on the one Rust backend object:
every `tokenizer(...)`/`encode(...)` first runs `set_truncation_and_padding`, which writes that
state whenever the call asks for a different setting than the last call left behind. Calls that
disagree therefore race: with tokenizers < 0.23.1 the write fails as `RuntimeError: Already
borrowed` while another thread is encoding; from 0.23.1 the backend sits behind a RwLock, so the
write succeeds and the other thread's encode silently runs truncated or padded instead.

Our calls (the engine's `encode(prompt)`, `PromptBuilder`'s `encode`/`apply_chat_template(...,
tokenize=False)`/`decode([id])`, `IncrementalDetokenizer`'s `decode(ids, skip_special_tokens=True)`)
never ask for truncation or padding, so none of them ever writes backend state and sharing is safe.
These tests pin that, and show the stress harness does catch a thread that breaks it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from deployments.generation import ChatMessage, GenerationRequest
from deployments.replica.prompts import PromptBuilder
from engine import SamplingParams
from engine.core.detokenizer import IncrementalDetokenizer

_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "héllo wörld, naïve café — 你好，世界 🙂🚀 ok",
    "  leading spaces\tand\ttabs\nand new lines\n\n",
]
_CHATS = [
    [ChatMessage("system", "You are terse."), ChatMessage("user", "Hi there")],
    [
        ChatMessage("user", "héllo 你好 🙂", name="ada"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "more"),
    ],
]
# Backend methods and attributes that change the state every later call runs with.
_BACKEND_WRITES = frozenset(
    {"enable_truncation", "no_truncation", "enable_padding", "no_padding", "add_tokens", "add_special_tokens"}
)


class WrongResult(AssertionError):
    """A call under contention returned something else than the same call made alone."""


@pytest.fixture
def tokenizer(llama_dir: Path) -> Any:
    # Fresh per test: the reconfiguring test leaves backend state behind.
    return AutoTokenizer.from_pretrained(llama_dir)


def _request(prompt: str | None = None, messages: list[ChatMessage] | None = None) -> GenerationRequest:
    return GenerationRequest(request_id="r", prompt=prompt, messages=messages, params=SamplingParams(), max_tokens=4)


def _stream_text(tokenizer: Any, prompt_ids: list[int], output_ids: list[int]) -> str:
    """Output text as the engine streams it: one token per step through the detokenizer."""
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, stop=[])
    text = ""
    for index, token_id in enumerate(output_ids):
        detokenizer.add_tokens([token_id], finished=index == len(output_ids) - 1)
        text += detokenizer.release(finished=index == len(output_ids) - 1)
    return text


def _our_calls(tokenizer: Any) -> list[Callable[[int], None]]:
    """One worker per call site, each checking its answer against the same call made single-threaded."""
    builder = PromptBuilder(tokenizer, context_len=4096, model_name="tiny")
    text_requests = [_request(prompt=text) for text in _TEXTS]
    chat_requests = [_request(messages=chat) for chat in _CHATS]
    streams = [(tokenizer.encode(a), tokenizer.encode(b)) for a, b in zip(_TEXTS, _TEXTS[1:] + _TEXTS[:1])]
    expected = {
        "engine_encode": [tokenizer.encode(text) for text in _TEXTS],
        "prompt_text": [builder.prompt_token_ids(request) for request in text_requests],
        "prompt_chat": [builder.prompt_token_ids(request) for request in chat_requests],
        "detokenize": [_stream_text(tokenizer, prompt, output) for prompt, output in streams],
        "token_text": [tokenizer.decode([token_id]) for token_id in range(len(tokenizer))],
    }
    # A builder whose token_text cache is empty, so the event loop's calls reach the tokenizer.
    event_loop_builder = PromptBuilder(tokenizer, context_len=4096, model_name="tiny")

    def check(kind: str, index: int, got: object) -> None:
        if got != expected[kind][index]:
            raise WrongResult(f"{kind}[{index}]: {got!r} != {expected[kind][index]!r}")

    def engine_thread(i: int) -> None:  # LLMEngine._tokenize, then the detokenizer each step
        index = i % len(_TEXTS)
        check("engine_encode", index, tokenizer.encode(_TEXTS[index]))
        check("detokenize", index, _stream_text(tokenizer, *streams[index]))

    def completion_worker(i: int) -> None:  # asyncio.to_thread(builder.prompt_token_ids, ...)
        index = i % len(text_requests)
        check("prompt_text", index, builder.prompt_token_ids(text_requests[index]))

    def chat_worker(i: int) -> None:
        index = i % len(chat_requests)
        check("prompt_chat", index, builder.prompt_token_ids(chat_requests[index]))

    def event_loop(i: int) -> None:  # logprobs: builder.token_text(token_id)
        token_id = (i * 7) % len(tokenizer)
        check("token_text", token_id, event_loop_builder.token_text(token_id))

    return [engine_thread, completion_worker, completion_worker, chat_worker, chat_worker, event_loop]


def _hammer(
    workers: list[Callable[[int], None]], *, iterations: int, time_limit_s: float, stop_on_failure: bool = False
) -> tuple[list[BaseException], list[int]]:
    """Runs each worker in its own thread, all released at once, for `iterations` calls or until
    `time_limit_s`; returns every exception raised and how many calls each thread made."""
    failures: list[BaseException] = []
    calls = [0] * len(workers)
    stop = threading.Event()
    start = threading.Barrier(len(workers))
    deadline = time.monotonic() + time_limit_s

    def run(slot: int, worker: Callable[[int], None]) -> None:
        start.wait()
        for i in range(iterations):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                worker(i)
            except Exception as error:  # collected; the caller asserts on them
                failures.append(error)
                if stop_on_failure:
                    stop.set()
            calls[slot] += 1

    threads = [threading.Thread(target=run, args=slot_worker, daemon=True) for slot_worker in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=time_limit_s + 10)
    stop.set()
    assert not any(thread.is_alive() for thread in threads), "a stress thread hung"
    return failures, calls


def _reconfiguring_caller(tokenizer: Any) -> Callable[[int], None]:
    """Code we do not have: alternates truncation and padding, so each call rewrites backend state."""

    def call(i: int) -> None:
        if i % 2:
            tokenizer(_TEXTS[1], truncation=True, max_length=8)
        else:
            tokenizer(_TEXTS[0], padding="max_length", max_length=64)

    return call


class _BackendSpy:
    """Stands in for `tokenizer._tokenizer`, forwarding everything and noting every state write."""

    def __init__(self, backend: Any) -> None:
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "writes", [])

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._backend, name)
        if name not in _BACKEND_WRITES:
            return attribute

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            return attribute(*args, **kwargs)

        return write

    def __setattr__(self, name: str, value: Any) -> None:
        self.writes.append(f"{name} =")
        setattr(self._backend, name, value)


def test_our_tokenizer_calls_never_reconfigure_the_shared_backend(tokenizer: Any) -> None:
    spy = _BackendSpy(tokenizer._tokenizer)
    tokenizer._tokenizer = spy
    for worker in _our_calls(tokenizer):  # the references are computed through the spy as well
        for i in range(8):
            worker(i)

    assert spy.writes == []
    assert spy.truncation is None and spy.padding is None


def test_our_tokenizer_calls_from_many_threads_never_collide(tokenizer: Any) -> None:
    failures, calls = _hammer(_our_calls(tokenizer), iterations=500, time_limit_s=8.0)

    assert failures == [], f"{len(failures)} failures, first: {failures[0]!r}"
    assert all(calls), f"a thread never ran: {calls}"
    assert tokenizer.backend_tokenizer.truncation is None and tokenizer.backend_tokenizer.padding is None


def test_a_truncating_call_leaves_the_shared_backend_reconfigured(tokenizer: Any) -> None:
    """The state a reconfiguring call writes outlives it, so the next caller on any thread meets it."""
    backend = tokenizer.backend_tokenizer
    caller = _reconfiguring_caller(tokenizer)

    caller(1)
    assert backend.truncation is not None and backend.truncation["max_length"] == 8
    caller(2)
    assert backend.truncation is None and backend.padding is not None and backend.padding["length"] == 64

    spy = _BackendSpy(backend)
    tokenizer._tokenizer = spy
    tokenizer.encode(_TEXTS[1])  # our call now has to write, to undo the padding
    assert spy.writes == ["no_padding"]
    assert backend.truncation is None and backend.padding is None


def test_stress_harness_catches_a_thread_that_reconfigures_the_tokenizer(tokenizer: Any) -> None:
    workers = _our_calls(tokenizer)[:-1] + [_reconfiguring_caller(tokenizer)]
    failures, calls = _hammer(workers, iterations=1_000_000, time_limit_s=8.0, stop_on_failure=True)

    # tokenizers < 0.23.1 refuses the write mid-encode; later versions let it through and the
    # encode that was under way (or about to start) runs truncated or padded.
    def expected(failure: BaseException) -> bool:
        return isinstance(failure, WrongResult) or (
            isinstance(failure, RuntimeError) and "Already borrowed" in str(failure)
        )

    assert failures, f"no collision seen in {sum(calls)} calls"
    assert all(expected(failure) for failure in failures), [f for f in failures if not expected(f)][:3]
