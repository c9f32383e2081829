"""One request's place in its grammar, and the token bitmasks of a batch's constrained rows.

A bitmask row holds ceil(V / 32) int32 words: token t may come next when bit t % 32 of word
t // 32 is set. Rows travel in a step's batch as bytes (little-endian words), so they cross to
tensor-parallel shards like the rest of the batch.
"""

from __future__ import annotations

import logging

import torch
from llguidance import LLExecutor, LLMatcher
from llguidance.torch import fill_next_token_bitmask, fill_next_token_bitmask_par

__all__ = ["GrammarMatcher", "bitmask_words", "fill_token_bitmasks"]

logger = logging.getLogger(__name__)


def bitmask_words(vocab_size: int) -> int:
    """int32 words in one row of a bitmask over `vocab_size` tokens."""
    return (vocab_size + 31) // 32


class GrammarMatcher:
    """Which tokens a request may generate next, advanced past each token it generates."""

    def __init__(self, matcher: LLMatcher) -> None:
        self._matcher = matcher

    @property
    def llguidance_matcher(self) -> LLMatcher:
        return self._matcher

    def accept(self, token_id: int) -> bool:
        """Advance past `token_id`; False (and the matcher in its error state) if the grammar
        does not allow it, which a masked choice never does."""
        accepted = self._matcher.consume_token(token_id)
        if not accepted:
            logger.warning("grammar refused token %d: %s", token_id, self._matcher.get_error())
        return accepted

    @property
    def is_finished(self) -> bool:
        """Nothing but the end of sequence may follow (the output is complete), or it failed."""
        return self._matcher.is_stopped()


# Masks several rows in parallel threads (outside the GIL); one row is cheaper done inline.
_EXECUTOR = LLExecutor()


def fill_token_bitmasks(matchers: list[GrammarMatcher], vocab_size: int) -> list[bytes]:
    """Each matcher's allowed next tokens, as a bitmask row of `bitmask_words(vocab_size)` words."""
    if not matchers:
        return []
    bitmask = torch.zeros(len(matchers), bitmask_words(vocab_size), dtype=torch.int32)  # (R, W)
    if len(matchers) == 1:
        fill_next_token_bitmask(matchers[0].llguidance_matcher, bitmask, 0)
    else:
        rows = [(matcher.llguidance_matcher, index) for index, matcher in enumerate(matchers)]
        fill_next_token_bitmask_par(_EXECUTOR, rows, bitmask)
    return [row.numpy().tobytes() for row in bitmask]
