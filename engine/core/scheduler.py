"""Which tokens of which sequences run in the next step, and what happens after it ran.

Plain Python, no torch. Three policies share one mechanism:

- continuous: iteration-level. Each step gives running sequences their tokens first (one token
  when decoding, a chunk when prefilling), then admits waiting sequences while the token budget,
  the sequence cap and the KV pool allow. Finished sequences leave after every step.
- static: batch-level. Waiting sequences are admitted only when nothing runs; the batch then runs
  until its last member finishes.
- request: one request at a time.

When a running sequence needs a block and none is free, the newest running sequence is
preempted: its blocks are freed and it waits at the head of the queue to be recomputed.
"""

from __future__ import annotations

import time
from collections import deque

from engine.config import EngineConfig
from engine.core.block_manager import BlockManager
from engine.core.sequence import Sequence, SequenceStatus
from engine.outputs import FinishReason
from engine.step_data import SampledTokens, ScheduledChunk, SchedulerOutput

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, config: EngineConfig, num_kv_blocks: int, max_model_len: int, eos_token_ids: set[int]) -> None:
        self.config = config
        self.block_manager = BlockManager(num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        # Admission order: the last one is the newest, and the first to be preempted.
        self.running: list[Sequence] = []
        self.sequences: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.prefix_cache_queried_tokens = 0
        self.prefix_cache_hit_tokens = 0
        self.num_prompt_tokens_computed = 0
        self.num_generation_tokens = 0

    # ----- requests in and out -------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.sequences[seq.request_id] = seq
        self.waiting.append(seq)

    def finish(self, request_id: str, reason: FinishReason) -> Sequence | None:
        """End a sequence (abort, stop string) and free its blocks. None if it is unknown."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self._mark_finished(seq, reason)
        return seq

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- schedule ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        was_idle = not self.running
        budget = self._schedule_running(output, budget)
        if self._may_admit(was_idle, output):
            self._admit_waiting(output, budget)
        return output

    def _may_admit(self, was_idle: bool, output: SchedulerOutput) -> bool:
        if output.preempted_ids:
            # Memory is short: new work would only be preempted again.
            return False
        if self.config.scheduling == "continuous":
            return True
        return was_idle

    def _admission_cap(self) -> int:
        return 1 if self.config.scheduling == "request" else self.config.max_num_seqs

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.can_append(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim, output)
                if victim is seq:
                    break
            else:
                self.block_manager.append(seq, num_new)
                output.chunks.append(self._chunk(seq, num_new))
                budget -= num_new
                index += 1
        return budget

    def _admit_waiting(self, output: SchedulerOutput, budget: int) -> None:
        """Move waiting sequences into `running`, FCFS, while the pool and the caps allow.

        Continuous admits only what the token budget lets run now. Static and request admit a
        whole batch when idle; members beyond this step's budget run in the next steps.
        """
        static_batch = self.config.scheduling != "continuous"
        while self.waiting and len(self.running) < self._admission_cap():
            if budget <= 0 and not static_batch:
                break
            seq = self.waiting[0]
            cached_block_ids = self.block_manager.match_prefix(seq)
            num_cached = len(cached_block_ids) * self.config.block_size
            num_new = min(seq.num_tokens - num_cached, max(budget, 0))
            if not self.block_manager.can_admit(cached_block_ids, num_cached + num_new):
                break
            self.waiting.popleft()
            self.block_manager.admit(seq, cached_block_ids)
            self.prefix_cache_queried_tokens += seq.num_tokens
            self.prefix_cache_hit_tokens += num_cached
            if seq.num_cached_prompt_tokens is None:
                seq.num_cached_prompt_tokens = min(num_cached, seq.num_prompt_tokens)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if num_new > 0:
                self.block_manager.append(seq, num_new)
                output.chunks.append(self._chunk(seq, num_new))
                budget -= num_new

    def _chunk(self, seq: Sequence, num_new: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        reaches_end = start + num_new == seq.num_tokens
        needs_counts = reaches_end and seq.params.has_penalties
        return ScheduledChunk(
            request_id=seq.request_id,
            token_ids=seq.token_slice(start, start + num_new),
            start_position=start,
            block_ids=list(seq.block_ids),
            sampling=seq.params if reaches_end else None,
            seed=seq.seed,
            num_output_tokens=seq.num_output_tokens,
            output_token_ids=list(seq.output_token_ids) if needs_counts else [],
        )

    def _preempt(self, seq: Sequence, output: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        output.preempted_ids.append(seq.request_id)

    # ----- update --------------------------------------------------------------------------

    def update(self, output: SchedulerOutput, sampled: SampledTokens) -> list[Sequence]:
        """Advance every scheduled sequence past its chunk and append the sampled tokens.

        Returns the sequences that gained a token (finished ones included, already freed).
        """
        now = time.time()
        sampled_index = 0
        updated: list[Sequence] = []
        for chunk in output.chunks:
            seq = self.sequences[chunk.request_id]
            is_decode = chunk.sampling is not None and len(chunk.token_ids) == 1 and seq.num_output_tokens > 0
            if not is_decode:
                self.num_prompt_tokens_computed += len(chunk.token_ids)
            seq.num_computed_tokens += len(chunk.token_ids)
            if chunk.sampling is None:
                continue
            self._append_token(seq, sampled, sampled_index, now)
            sampled_index += 1
            updated.append(seq)
        return updated

    def _append_token(self, seq: Sequence, sampled: SampledTokens, index: int, now: float) -> None:
        """Append entry `index` of `sampled` to `seq`; finish it if that token ends it."""
        token_id = sampled.token_ids[index]
        seq.output_token_ids.append(token_id)
        if seq.params.logprobs:
            seq.output_logprobs.append(sampled.logprobs[index])
        if seq.params.top_logprobs:
            seq.output_top_logprobs.append(sampled.top_logprobs[index])
        if seq.first_token_time is None:
            seq.first_token_time = now
        self.num_generation_tokens += 1
        reason = self._finish_reason(seq, token_id)
        if reason is not None:
            self.finish(seq.request_id, reason)

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        if token_id in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and token_id in self.eos_token_ids:
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _mark_finished(self, seq: Sequence, reason: FinishReason) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_time = time.time()
