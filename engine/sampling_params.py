"""Per-request sampling parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["MAX_PENALTY", "MAX_TOP_LOGPROBS", "SamplingParams"]

# OpenAI's bounds: penalties in [-MAX_PENALTY, MAX_PENALTY], at most MAX_TOP_LOGPROBS alternatives.
MAX_PENALTY = 2.0
MAX_TOP_LOGPROBS = 20


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
    # OpenAI-style penalties over the request's generated tokens (never the prompt), in [-2, 2].
    # With c[t] = how often token t was generated so far, each step's logits become
    # logits[t] - frequency_penalty * c[t] - presence_penalty * (c[t] > 0), before greedy,
    # temperature, top-k and top-p. Positive values discourage repetition, negative encourage it.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
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
    # Also return, per step, this many most likely tokens with their logprobs (same unmodified
    # distribution, most likely first); 0 returns none. At most 20; > 0 needs logprobs=True.
    top_logprobs: int = 0

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
        for name in ("presence_penalty", "frequency_penalty"):
            _check_penalty(name, getattr(self, name))
        self._check_top_logprobs()

    def _check_top_logprobs(self) -> None:
        top_logprobs = self.top_logprobs
        is_int = isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool)
        if not (is_int and 0 <= top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs!r}")
        if top_logprobs > 0 and not self.logprobs:
            raise ValueError(f"top_logprobs > 0 requires logprobs=True, got top_logprobs={top_logprobs}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _check_penalty(name: str, value: float) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
        raise ValueError(f"{name} must be a finite number in [-{MAX_PENALTY}, {MAX_PENALTY}], got {value!r}")
