"""A request's state inside the engine: its tokens, its KV blocks and how far it has run."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams
from engine.step_data import PromptLogprob

if TYPE_CHECKING:
    from engine.structured.matcher import GrammarMatcher

__all__ = ["DEFAULT_TENANT", "Sequence", "SequenceStatus"]

# The tenant of a request that names none: all such requests are one tenant (one counter, one share).
DEFAULT_TENANT = ""


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request. Its tokens are the prompt followed by what it has generated.

    `num_computed_tokens` counts the tokens whose keys and values are in the KV cache. A step
    computes the tokens after that point (a prompt chunk, a recompute after preemption, or the one
    newest token when decoding) and, when it reaches the last token, samples the next one.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # Seed of the sampling noise, fixed at arrival so recompute and batch mates cannot change it.
    seed: int
    # Who the request is for, and that tenant's scheduling weight (> 0): under fair tenant
    # scheduling a tenant of weight 2 gets twice the service of one of weight 1 (engine.core.fair_policy).
    tenant: str = DEFAULT_TENANT
    tenant_weight: float = 1.0
    arrival_time: float = field(default_factory=time.time)
    output_token_ids: list[int] = field(default_factory=list)
    # Logprob of each output token (filled only when params.logprobs).
    output_logprobs: list[float] = field(default_factory=list)
    # Per output token, the params.top_logprobs most likely (token id, logprob) pairs, most likely
    # first (filled only when params.top_logprobs > 0).
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    num_computed_tokens: int = 0
    # The sequence's block table: block i holds the KV of tokens [i * block_size, (i + 1) * block_size).
    block_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    # When it was first admitted to the running batch (time.time() seconds); a recompute after
    # preemption does not change it.
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    # Prompt tokens whose KV the prefix cache supplied when the request was first admitted (None
    # until then; a recompute after preemption does not change it).
    num_cached_prompt_tokens: int | None = None
    # Logprob of each prompt token after the first, given those before it (with params.prompt_logprobs).
    prompt_logprobs: list[PromptLogprob] = field(default_factory=list)
    # The most prompt tokens this sequence ever had in the KV cache. The fair policy charges its
    # tenant only for prompt tokens computed beyond it, so a recompute after preemption is free.
    max_num_computed_prompt_tokens: int = 0
    # With params.structured_output: where its output stands in the grammar (set before it is
    # scheduled; it has consumed every output token).
    grammar: GrammarMatcher | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def token_slice(self, start: int, stop: int) -> list[int]:
        """Tokens [start, stop) without building the whole prompt + output list."""
        num_prompt = len(self.prompt_token_ids)
        if stop <= num_prompt:
            return self.prompt_token_ids[start:stop]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : stop - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: stop - num_prompt]
