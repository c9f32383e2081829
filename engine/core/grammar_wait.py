"""Requests whose grammar is still compiling: they reach the scheduler once their matcher is ready,
so a slow compile holds back only its own request, never the step loop or the queue behind it."""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import CancelledError, Future

from engine.core.sequence import Sequence
from engine.structured.matcher import GrammarMatcher

__all__ = ["GrammarWait"]


class GrammarWait:
    def __init__(self) -> None:
        self._pending: dict[str, tuple[Sequence, Future[GrammarMatcher]]] = {}

    def add(self, seq: Sequence, matcher: Future[GrammarMatcher]) -> None:
        self._pending[seq.request_id] = (seq, matcher)

    def remove(self, request_id: str) -> Sequence | None:
        """Drop a request (aborted); None if it is not waiting here."""
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return None
        entry[1].cancel()
        return entry[0]

    def take_ready(self) -> tuple[list[Sequence], list[tuple[Sequence, BaseException]]]:
        """The requests whose compile finished, in arrival order: those now holding their matcher
        (`seq.grammar` set), and those whose grammar failed, with the error."""
        ready: list[Sequence] = []
        failed: list[tuple[Sequence, BaseException]] = []
        for request_id, (seq, matcher) in list(self._pending.items()):
            if not matcher.done():
                continue
            del self._pending[request_id]
            error = CancelledError() if matcher.cancelled() else matcher.exception()
            if error is None:
                seq.grammar = matcher.result()
                ready.append(seq)
            else:
                failed.append((seq, error))
        return ready, failed

    def wait(self, timeout_s: float) -> None:
        """Block until a compile finishes or `timeout_s` passes (for a step loop with nothing else to run)."""
        concurrent.futures.wait(
            [matcher for _, matcher in self._pending.values()],
            timeout=timeout_s,
            return_when=concurrent.futures.FIRST_COMPLETED,
        )

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)
