"""What the engine hands back: per-request output deltas and engine-wide statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["EngineStats", "FinishReason", "RequestOutput", "RequestTiming"]

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class RequestTiming:
    """Wall-clock times (`time.time()` seconds) of a request's life."""

    arrival: float
    first_token: float | None = None
    finish: float | None = None


@dataclass
class RequestOutput:
    """One step's news for one request: the tokens it gained, plus everything so far."""

    request_id: str
    prompt_token_ids: list[int]
    # All generated tokens so far.
    token_ids: list[int]
    # Tokens generated in this step (the delta).
    new_token_ids: list[int]
    # Logprob of each generated token so far (empty unless SamplingParams.logprobs).
    logprobs: list[float]
    # Generated text so far, and this step's part of it; empty when the engine has no tokenizer.
    text: str
    delta_text: str
    # None while the request runs.
    finish_reason: FinishReason | None
    timing: RequestTiming
    # Logprobs of this step's new tokens (the delta of `logprobs`).
    new_logprobs: list[float] = field(default_factory=list)
    # Per generated token so far, the SamplingParams.top_logprobs most likely (token id, logprob)
    # pairs at that step under the model's unmodified distribution, most likely first; empty
    # unless SamplingParams.top_logprobs > 0.
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Top logprobs of this step's new tokens (the delta of `top_logprobs`).
    new_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Prompt tokens served from the prefix cache when the request was admitted (0 before that).
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def following(self, earlier: RequestOutput) -> RequestOutput:
        """This output as the delta since the step before `earlier` (two consecutive deltas as one)."""
        return dataclasses.replace(
            self,
            new_token_ids=earlier.new_token_ids + self.new_token_ids,
            new_logprobs=earlier.new_logprobs + self.new_logprobs,
            new_top_logprobs=earlier.new_top_logprobs + self.new_top_logprobs,
            delta_text=earlier.delta_text + self.delta_text,
        )


@dataclass
class EngineStats:
    """A snapshot of the engine's load and of its counters since start."""

    num_running: int
    num_waiting: int
    # Times a running sequence was evicted to free KV blocks (it resumes by recompute).
    num_preemptions: int
    kv_blocks_total: int
    kv_blocks_used: int
    # Tokens whose keys and values sit in used blocks; waste = 1 - stored / (used * block_size).
    kv_tokens_stored: int
    block_size: int
    # Prompt tokens looked up in the prefix cache, and how many of them were found.
    prefix_cache_queried_tokens: int
    prefix_cache_hit_tokens: int
    # Tokens run through the model as prompt (prefill, including recompute after preemption).
    num_prompt_tokens_computed: int
    num_generation_tokens: int

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def kv_waste(self) -> float:
        capacity = self.kv_blocks_used * self.block_size
        return 1.0 - self.kv_tokens_stored / capacity if capacity else 0.0
