"""Per-request sampling parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["SamplingParams"]


@dataclass
class SamplingParams:
    """How one request chooses its tokens and when it stops.

    Invalid values raise `ValueError` naming the field and the value.
    """

    # Most tokens to generate.
    max_tokens: int = 16
    # 0 is greedy; higher flattens the distribution.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    top_p: float = 1.0
    # Keep only the k most likely tokens; 0 keeps all.
    top_k: int = 0
    # Same seed and prompt give the same tokens, whatever else shares the batch. None draws from
    # the engine's seed and the request id.
    seed: int | None = None
    # Generation stops when the text contains one of these; the stop string is not returned.
    stop: list[str] = field(default_factory=list)
    # Generation stops after one of these tokens (it is kept in token_ids).
    stop_token_ids: list[int] = field(default_factory=list)
    # Keep generating past the model's end-of-sequence token.
    ignore_eos: bool = False
    # Return the chosen token's logprob (under the model's unmodified distribution) per step.
    logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps all tokens), got {self.top_k}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not isinstance(text, str) or not text for text in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
