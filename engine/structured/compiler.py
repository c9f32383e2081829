"""Compiles requests' grammars for one model's tokenizer on a thread of its own, and caches them.

Compiling a grammar (parsing it, turning a JSON schema into rules, building its lexer for the
vocabulary) takes about a millisecond for a small schema and tens for a large one, and building
llguidance's view of the tokenizer takes a fraction of a second once: neither may stall the step
loop, so both run on the compiler's thread, the tokenizer's as soon as the compiler is made.
Each distinct grammar is compiled once; a request gets a copy of its compiled matcher
(microseconds), whose state is then its own.

Validation (`validate`) is the one part on the caller's thread: it parses the grammar without the
vocabulary (about 4 ms for a 60-field schema, the first time only), so a bad schema or regex is
refused when the request is added, naming the problem;
and a tokenizer llguidance cannot use (no end-of-sequence token, not a fast tokenizer) refuses
every structured request the same way (the first one waits for that build to finish).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import llguidance.hf
from llguidance import LLMatcher, LLTokenizer

from engine.errors import InvalidGrammarError
from engine.structured.matcher import GrammarMatcher
from engine.structured.spec import StructuredOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["GRAMMAR_CACHE_SIZE", "GrammarCompiler"]

logger = logging.getLogger(__name__)

# Compiled grammars kept per engine (least recently used out first).
GRAMMAR_CACHE_SIZE = 256


class GrammarCompiler:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        eos_token_ids: set[int],
        cache_size: int = GRAMMAR_CACHE_SIZE,
    ) -> None:
        """`vocab_size`: the model's logits width (bitmask rows cover it); `eos_token_ids`: the
        tokens that end a sequence, allowed wherever the grammar may end."""
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._cache_size = cache_size
        # llguidance grammar text -> its compiled matcher, in its start state (copied per request).
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        # Grammars known to be valid, so validating them again costs nothing.
        self._valid: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compiler")
        self._lltokenizer: Future[LLTokenizer] = self._executor.submit(self._build_llguidance_tokenizer)

    def validate(self, spec: StructuredOutput) -> None:
        """Raise InvalidGrammarError, naming the problem, for a grammar that cannot compile."""
        tokenizer_error = self._lltokenizer.exception()
        if tokenizer_error is not None:
            raise InvalidGrammarError(f"structured output is unavailable for this model: {tokenizer_error}")
        try:
            grammar = spec.llguidance_grammar()
        except ValueError as error:
            raise InvalidGrammarError(f"invalid {spec.kind}: {error}") from None
        with self._lock:
            if grammar in self._valid:
                self._valid.move_to_end(grammar)
                return
        message = LLMatcher.validate_grammar(grammar)
        if message:
            raise InvalidGrammarError(f"invalid {spec.kind}: {message.strip()}")
        with self._lock:
            _remember(self._valid, grammar, None, self._cache_size)

    def matcher(self, spec: StructuredOutput) -> Future[GrammarMatcher]:
        """A fresh matcher for `spec`, compiled (or copied from the cache) on the compiler's thread.
        The future fails with InvalidGrammarError for a grammar that does not compile."""
        return self._executor.submit(self._matcher, spec)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        grammar = spec.llguidance_grammar()
        with self._lock:
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
        if compiled is None:
            compiled = LLMatcher(self._lltokenizer.result(), grammar, log_level=0)
            if compiled.is_error():
                raise InvalidGrammarError(f"invalid {spec.kind}: {compiled.get_error()}")
            with self._lock:
                _remember(self._compiled, grammar, compiled, self._cache_size)
        return GrammarMatcher(compiled.deep_copy())

    def _build_llguidance_tokenizer(self) -> LLTokenizer:
        return llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab_size, eos_token=self._eos_token_ids)


def _remember(cache: OrderedDict[str, object], key: str, value: object, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
