"""Turns a growing list of output tokens into text, a delta at a time, and finds stop strings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["IncrementalDetokenizer"]

# Prompt tokens decoded as left context, so the first output token's leading space or
# byte-merge is rendered as it would be mid-text.
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Decodes only a short window of tokens per step instead of the whole output.

    Text is released once it is final: a window ending in an incomplete UTF-8 sequence (U+FFFD)
    waits for the next token, and while stop strings are set the last `len(longest stop) - 1`
    characters are held back, so a stop string is never half-streamed.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        stop: list[str],
        include_stop: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        """`include_stop`: keep a stop string found in the text (it is cut after, not before, it);
        `skip_special_tokens`: leave special tokens out of the text."""
        self.tokenizer = tokenizer
        self.stop = stop
        self.include_stop = include_stop
        self.skip_special_tokens = skip_special_tokens
        self._hold_back = max((len(s) for s in stop), default=1) - 1
        self._ids: list[int] = prompt_token_ids[-_CONTEXT_TOKENS:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # Final text so far; `_released` characters of it were handed out.
        self.text = ""
        self._released = 0

    def add_tokens(self, token_ids: list[int], finished: bool = False) -> None:
        """Decode newly generated tokens; `finished` flushes an incomplete UTF-8 tail as U+FFFD."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if (full_text.endswith("\ufffd") and not finished) or len(full_text) <= len(prefix_text):
            return
        self.text += full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)

    def find_stop(self, num_new_chars: int) -> str | None:
        """The stop string now in the text, if any; the text is cut before it (after it with
        `include_stop`)."""
        search_from = max(0, len(self.text) - num_new_chars - self._hold_back)
        found: tuple[int, str] | None = None
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index != -1 and (found is None or index < found[0]):
                found = (index, stop)
        if found is None:
            return None
        index, stop = found
        self.text = self.text[: index + len(stop) if self.include_stop else index]
        return stop

    def release(self, finished: bool) -> str:
        """Text not handed out yet that is safe to hand out now."""
        end = len(self.text) if finished else max(self._released, len(self.text) - self._hold_back)
        delta = self.text[self._released : end]
        self._released = end
        return delta

    @property
    def released_text(self) -> str:
        return self.text[: self._released]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
