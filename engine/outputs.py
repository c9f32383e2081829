"""What the engine hands back: per-request output deltas and engine-wide statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EngineStats",
    "FinishReason",
    "OutputHistory",
    "PromptLogprobEntry",
    "RequestOutput",
    "RequestTiming",
    "ShardInfo",
]

FinishReason = Literal["stop", "length", "abort"]
# A prompt token's entry: None for the first, else (its logprob, the top (token id, logprob) pairs).
PromptLogprobEntry = tuple[float, list[tuple[int, float]]] | None


@dataclass
class RequestTiming:
    """Wall-clock times (`time.time()` seconds) of a request's life."""

    arrival: float
    first_token: float | None = None
    finish: float | None = None


@dataclass(frozen=True)
class OutputHistory:
    """A request's output so far, in lists the engine only ever appends to: an output reads the
    first `num_generated_tokens` entries (and `num_text_pieces` pieces) of them, so no step copies a
    request's whole history."""

    # Generated token ids, and (when asked for) their logprobs and top logprobs.
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    # The text released so far, one piece per output that released any.
    text_pieces: list[str]
    # With SamplingParams.prompt_logprobs, once the prompt is scored: per prompt token, None for
    # the first, then (its logprob given those before it, the most likely (token id, logprob)
    # pairs at its position). Empty until then.
    prompt_logprobs: list[PromptLogprobEntry] = field(default_factory=list)


@dataclass
class RequestOutput:
    """One step's news for one request: the tokens it gained, and (read on demand) all so far."""

    request_id: str
    prompt_token_ids: list[int]
    # Tokens generated in this step (the delta), and their logprobs (empty unless
    # SamplingParams.logprobs).
    new_token_ids: list[int]
    new_logprobs: list[float]
    # Per new token, the SamplingParams.top_logprobs most likely (token id, logprob) pairs at that
    # step under the model's unmodified distribution, most likely first; empty unless
    # SamplingParams.top_logprobs > 0.
    new_top_logprobs: list[list[tuple[int, float]]]
    # This step's part of the generated text; empty when the engine has no tokenizer.
    delta_text: str
    # None while the request runs.
    finish_reason: FinishReason | None
    timing: RequestTiming
    # Tokens generated so far, this step's included.
    num_generated_tokens: int
    # Prompt tokens served from the prefix cache when the request was admitted (0 before that).
    num_cached_tokens: int = 0
    # Where `token_ids`, `logprobs`, `top_logprobs` and `text` are read from; pieces of text so far.
    history: OutputHistory = field(default_factory=lambda: OutputHistory([], [], [], []), repr=False, compare=False)
    num_text_pieces: int = 0
    # The prompt logprobs (see OutputHistory) in the output that first has them; None in others.
    new_prompt_logprobs: list[PromptLogprobEntry] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def token_ids(self) -> list[int]:
        """All generated tokens so far."""
        return self.history.token_ids[: self.num_generated_tokens]

    @property
    def logprobs(self) -> list[float]:
        """Logprob of each generated token so far (empty unless SamplingParams.logprobs)."""
        return self.history.logprobs[: self.num_generated_tokens]

    @property
    def top_logprobs(self) -> list[list[tuple[int, float]]]:
        """Top logprobs of each generated token so far (empty unless SamplingParams.top_logprobs)."""
        return self.history.top_logprobs[: self.num_generated_tokens]

    @property
    def prompt_logprobs(self) -> list[PromptLogprobEntry] | None:
        """With SamplingParams.prompt_logprobs, once the prompt is scored (see OutputHistory)."""
        return self.history.prompt_logprobs or None

    @property
    def text(self) -> str:
        """The generated text so far (empty when the engine has no tokenizer)."""
        return "".join(self.history.text_pieces[: self.num_text_pieces])

    def following(self, earlier: RequestOutput) -> RequestOutput:
        """This output as the delta since the step before `earlier` (two consecutive deltas as one)."""
        return dataclasses.replace(
            self,
            new_token_ids=earlier.new_token_ids + self.new_token_ids,
            new_logprobs=earlier.new_logprobs + self.new_logprobs,
            new_top_logprobs=earlier.new_top_logprobs + self.new_top_logprobs,
            delta_text=earlier.delta_text + self.delta_text,
            new_prompt_logprobs=(
                earlier.new_prompt_logprobs if earlier.new_prompt_logprobs is not None else self.new_prompt_logprobs
            ),
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


@dataclass(frozen=True)
class ShardInfo:
    """Where one shard of the model lives and what it holds."""

    rank: int
    # Ray node id; None for an engine running in process outside Ray.
    node_id: str | None
    device: str
    # Weight bytes as stored on the device (quantized weights count their real size).
    weight_bytes: int
    # Process id on its node (for a profiler, or to find the shard among the node's processes).
    pid: int
    # Pipeline stage the shard belongs to (its tensor-parallel rank within the stage is `rank`).
    stage: int = 0
