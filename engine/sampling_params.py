"""Per-request sampling parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.structured.spec import StructuredOutput

__all__ = ["MAX_LOGIT_BIAS", "MAX_PENALTY", "MAX_TOP_LOGPROBS", "SamplingParams"]

# OpenAI's bounds: penalties in [-MAX_PENALTY, MAX_PENALTY], at most MAX_TOP_LOGPROBS alternatives,
# logit biases in [-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS].
MAX_PENALTY = 2.0
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0



# Temperatures below this are sampled greedily (as vLLM does below its sampling epsilon).
GREEDY_BELOW_TEMPERATURE = 1e-5

@dataclass
class SamplingParams:
    """How one request chooses its tokens and when it stops.

    Invalid values raise `ValueError` naming the field and the value.
    """

    # Most tokens to generate; 0 generates none (with prompt_logprobs: scores the prompt).
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
    # Hugging Face's (and vLLM's) multiplicative penalty over every token of the prompt and the
    # output so far: a seen token's logit is divided by it when positive, multiplied when negative.
    # 1 is none; > 1 discourages repetition.
    repetition_penalty: float = 1.0
    # Added to the logits of these token ids before the choice (OpenAI's logit_bias, -100 bans
    # a token, 100 all but forces it). Reported logprobs stay the model's.
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Keep only tokens whose probability (after temperature) is at least min_p times the most
    # likely one's; 0 keeps all. Sampling only: greedy takes the most likely token anyway.
    min_p: float = 0.0
    # Generate at least this many tokens: until then the end-of-sequence and stop_token_ids
    # cannot be chosen and stop strings are not looked for.
    min_tokens: int = 0
    # Same seed and prompt give the same tokens, whatever else shares the batch. None draws from
    # the engine's seed and the request id.
    seed: int | None = None
    # Generation stops when the text contains one of these; the stop string is not returned
    # unless include_stop_str_in_output.
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    # Generation stops after one of these tokens (it is kept in token_ids).
    stop_token_ids: list[int] = field(default_factory=list)
    # Keep generating past the model's end-of-sequence token.
    ignore_eos: bool = False
    # Leave special tokens (end-of-sequence, chat markers) out of the text; token ids keep them.
    skip_special_tokens: bool = True
    # Return the chosen token's logprob (under the model's unmodified distribution) per step.
    logprobs: bool = False
    # Also return, per step, this many most likely tokens with their logprobs (same unmodified
    # distribution, most likely first); 0 returns none. At most 20; > 0 needs logprobs=True.
    top_logprobs: int = 0
    # Return each prompt token's logprob given the tokens before it (the first has none), with
    # this many most likely alternatives; None returns none. At most 20. Such a request computes
    # its whole prompt: it takes no KV blocks from the prefix cache (it still adds its own).
    prompt_logprobs: int | None = None
    # The output must match this (a JSON schema, any JSON object, a regex, one of some strings,
    # or a grammar): each step only tokens the grammar allows can be chosen, and the request
    # finishes ("stop") when the grammar is complete. Reported logprobs stay the model's.
    structured_output: StructuredOutput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {self.max_tokens!r}")
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
        penalty = self.repetition_penalty
        if not (_is_number(penalty) and math.isfinite(penalty) and penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if not (_is_number(self.min_p) and 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        self._check_logit_bias()
        self._check_top_logprobs()
        self._check_structured_output()

    def _check_structured_output(self) -> None:
        structured = self.structured_output
        if structured is None:
            return
        if not isinstance(structured, StructuredOutput):
            raise ValueError(f"structured_output must be a StructuredOutput, got {type(structured).__name__}")
        if self.min_tokens:
            # The grammar decides where the output ends; banning the end before min_tokens could
            # leave a complete grammar no token at all.
            raise ValueError(f"min_tokens cannot be combined with structured_output, got min_tokens={self.min_tokens}")

    def _check_logit_bias(self) -> None:
        for token_id, bias in self.logit_bias.items():
            if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {token_id!r}")
            if not (_is_number(bias) and math.isfinite(bias) and abs(bias) <= MAX_LOGIT_BIAS):
                raise ValueError(
                    f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {bias!r} "
                    f"for token {token_id}"
                )

    def _check_top_logprobs(self) -> None:
        top_logprobs = self.top_logprobs
        is_int = isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool)
        if not (is_int and 0 <= top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs!r}")
        if top_logprobs > 0 and not self.logprobs:
            raise ValueError(f"top_logprobs > 0 requires logprobs=True, got top_logprobs={top_logprobs}")
        prompt_logprobs = self.prompt_logprobs
        if prompt_logprobs is not None and not (
            isinstance(prompt_logprobs, int)
            and not isinstance(prompt_logprobs, bool)
            and 0 <= prompt_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise ValueError(
                f"prompt_logprobs must be None or an integer in [0, {MAX_TOP_LOGPROBS}], got {prompt_logprobs!r}"
            )

    @property
    def is_greedy(self) -> bool:
        # A temperature this small is greedy in all but name, and dividing logits by it overflows
        # to inf (NaN probabilities), so it is sampled as greedy.
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        """Presence or frequency penalty: the sampler needs the generated tokens' ids."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def has_repetition_penalty(self) -> bool:
        """The sampler needs the prompt's and the generated tokens' ids."""
        return self.repetition_penalty != 1.0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_penalty(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
        raise ValueError(f"{name} must be a finite number in [-{MAX_PENALTY}, {MAX_PENALTY}], got {value!r}")
