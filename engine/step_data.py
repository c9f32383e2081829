"""The plain data crossing one engine step: schedule -> execute -> update.

    Scheduler.schedule() ──SchedulerOutput──▶ Executor.execute() ──SampledTokens──▶ Scheduler.update()

Lists of ints and floats (and bitmask bytes) only, no torch, since a batch crosses to the shard
processes (tensor-parallel ranks, pipeline stages) and back. With pipeline stages, the batch that
`execute` hands back to `update` may be an earlier one than it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams

__all__ = ["PromptLogprob", "SampledTokens", "ScheduledChunk", "SchedulerOutput"]

# A prompt token's logprob given the tokens before it, and the most likely (token id, logprob)
# pairs at its position, most likely first.
PromptLogprob = tuple[float, list[tuple[int, float]]]


@dataclass
class ScheduledChunk:
    """Tokens of one sequence to run in this step."""

    request_id: str
    # The tokens to compute: the sequence's tokens [start_position, start_position + len).
    token_ids: list[int]
    # Tokens already in the KV cache before this chunk (== position of token_ids[0]).
    start_position: int
    # The sequence's block table, long enough for start_position + len(token_ids) tokens.
    block_ids: list[int]
    # Sampling settings when this chunk ends at the sequence's last token (it then samples the
    # next token); None for a prompt chunk that is not the last.
    sampling: SamplingParams | None
    # Seed of this request's sampling noise, and how many tokens it generated before this step
    # (so each position draws its own noise, independent of batch and preemption).
    seed: int
    num_output_tokens: int
    # The tokens it generated before this step, counted by the presence and frequency penalties
    # (generated tokens survive preemption, so recompute sees the same counts). Filled only for a
    # sampling chunk of a request with a penalty; empty otherwise, to spare the copy.
    output_token_ids: list[int] = field(default_factory=list)
    # Its prompt, for the repetition penalty (which counts prompt tokens too); filled only for a
    # sampling chunk of a request with one.
    prompt_token_ids: list[int] = field(default_factory=list)
    # Tokens this step may not choose: the end-of-sequence and stop tokens while the request has
    # generated fewer than its min_tokens; empty otherwise.
    banned_token_ids: list[int] = field(default_factory=list)
    # With structured output, on a sampling chunk: the tokens its grammar allows next, as a
    # bitmask row (engine/structured/matcher.py: ceil(V / 32) little-endian int32 words, bit
    # t % 32 of word t // 32 for token t); None lets every token through.
    allowed_token_bitmask: bytes | None = None
    # Prompt logprobs to compute in this chunk: the logits at chunk positions prompt_logprob_offset,
    # prompt_logprob_offset + 1, ... score the next prompt tokens, these (empty: none).
    prompt_logprob_offset: int = 0
    prompt_logprob_targets: list[int] = field(default_factory=list)
    # How many most likely alternatives to report at each of those positions.
    prompt_top_logprobs: int = 0


@dataclass
class SchedulerOutput:
    """One step's batch, in the order the runner packs it."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    # Sequences evicted in this step (to free KV blocks, or a slot for a tenant below its fair share),
    # and the tenant of each, in the same order: with pipeline stages the batch's stats are reported
    # when it comes back, by which time a preempted request may have been aborted and be gone.
    preempted_ids: list[str] = field(default_factory=list)
    preempted_tenants: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(chunk.token_ids) for chunk in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class SampledTokens:
    """What the executor sampled: one entry per chunk whose `sampling` is set, in chunk order."""

    token_ids: list[int]
    # Logprob of each sampled token under the model's unmodified distribution.
    logprobs: list[float]
    # Per sampled token, the `params.top_logprobs` most likely (token id, logprob) pairs under the
    # same distribution, most likely first; [] where the request asked for none.
    top_logprobs: list[list[tuple[int, float]]]
    # Per chunk with prompt_logprob_targets (in chunk order): each target's logprob and the
    # `params.prompt_logprobs` most likely (token id, logprob) pairs at its position.
    prompt_logprobs: list[list[PromptLogprob]] = field(default_factory=list)
