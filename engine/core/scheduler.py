"""Which tokens of which sequences run in the next step, and what happens after it ran.

Plain Python, no torch. Three policies share one mechanism:

- continuous: iteration-level. Each step gives running sequences their tokens first (one token
  when decoding, a chunk when prefilling), then admits waiting sequences while the token budget,
  the sequence cap and the KV pool allow. Finished sequences leave after every step.
- static: batch-level. Waiting sequences are admitted only when nothing runs; the batch then runs
  until its last member finishes.
- request: one request at a time.

Waiting sequences are admitted in the order of `tenant_scheduling` (engine.core.fair_policy):
"fair" takes the tenant that received the least weighted service first, "fcfs" arrival order.

When a running sequence needs a block and none is free, a running sequence not yet scheduled in
this step is preempted: the newest ("fcfs"), or the newest of the tenant with the highest counter
("fair"). Its blocks are freed and it waits at the head of its tenant's queue to be recomputed;
nothing is admitted in that step, since memory is short.

Continuous + fair: a step first makes room for the next sequence to admit when its tenant is
below its fair share of `max_num_seqs` and there is no room for it (no free slot, or no KV for its
first chunk): a sequence of the tenant furthest above its share is preempted. This comes before
running sequences get their tokens, so a victim never drops a chunk already scheduled (whose
prefix-cache keys are published by then). These preemptions make room for admission, so they do
not stop it; if the running sequences then preempt for memory, admission waits a step and the
freed slot with it (nobody is admitted ahead of the candidate, first in the fair order). The
token budget is not a reason to preempt: running sequences use it first, and a candidate they
leave none for is admitted in a later step.

With pipeline stages, up to `pipeline_parallel_size` batches are in flight at once: a sequence
whose chunk is in flight is not scheduled again (its next token is not known yet) nor preempted
(its blocks are in use) until `update` has its batch, and each batch takes at most its share of
the active sequences, so that the batches in flight split them evenly. An abort may free an
in-flight sequence's blocks: every stage runs the batches in order, so whatever reuses them next
writes them after the in-flight batch did.
"""

from __future__ import annotations

import math
import time

from engine.config import EngineConfig
from engine.core.block_manager import BlockManager
from engine.core.fair_policy import WaitingQueue
from engine.core.sequence import Sequence, SequenceStatus
from engine.outputs import FinishReason
from engine.step_data import SampledTokens, ScheduledChunk, SchedulerOutput

__all__ = ["MAX_SCORED_POSITIONS_PER_STEP", "Scheduler"]

# Most prompt positions one step scores (prompt logprobs) over all its requests: each keeps a row of
# logits over the whole vocabulary, so this bounds that memory (512 x 128k vocabulary x 4 bytes =
# 256 MiB); a scoring request's prefill is chunked to fit.
MAX_SCORED_POSITIONS_PER_STEP = 512


class Scheduler:
    def __init__(self, config: EngineConfig, num_kv_blocks: int, max_model_len: int, eos_token_ids: set[int]) -> None:
        self.config = config
        self.block_manager = BlockManager(num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting = WaitingQueue(fair=config.tenant_scheduling == "fair")
        # Admission order: the last one is the newest.
        self.running: list[Sequence] = []
        self._preempts_for_fair_share = config.scheduling == "continuous" and config.tenant_scheduling == "fair"
        self.sequences: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.prefix_cache_queried_tokens = 0
        self.prefix_cache_hit_tokens = 0
        self.num_prompt_tokens_computed = 0
        self.num_generation_tokens = 0
        # Prompt positions the step being scheduled may still score.
        self._scoring_room = MAX_SCORED_POSITIONS_PER_STEP
        # Request ids whose scheduled chunk is in a batch not yet updated, and the most sequences
        # the batch being scheduled may take.
        self.in_flight: set[str] = set()
        self._batch_seq_cap = config.max_num_seqs

    # ----- requests in and out -------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        self.sequences[seq.request_id] = seq
        self.waiting.add(seq)

    def finish(self, request_id: str, reason: FinishReason) -> Sequence | None:
        """End a sequence (abort, stop string) and free its blocks. None if it is unknown."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.waiting.release(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.mark_finished(seq, reason)
        return seq

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- schedule ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        self._scoring_room = MAX_SCORED_POSITIONS_PER_STEP
        self._batch_seq_cap = self._batch_share()
        was_idle = not self.running
        if self._preempts_for_fair_share:
            self._make_room_for_fair_share(output)
        budget, memory_short = self._schedule_running(output, self.config.max_num_batched_tokens)
        if self._may_admit(was_idle, memory_short):
            self._admit_waiting(output, budget)
        return output

    def _may_admit(self, was_idle: bool, memory_short: bool) -> bool:
        if memory_short:
            # Memory is short: new work would only be preempted again.
            return False
        if self.config.scheduling == "continuous":
            return True
        return was_idle

    def _batch_share(self) -> int:
        """The most sequences one batch takes: all of them, or with batches in flight at once,
        their share of the active sequences (at least one)."""
        num_batches = self.config.pipeline_parallel_size
        if num_batches == 1:
            return self.config.max_num_seqs
        active = min(self.config.max_num_seqs, len(self.running) + len(self.waiting))
        return max(1, math.ceil(active / num_batches))

    def _schedulable(self, sequences: list[Sequence]) -> list[Sequence]:
        """Those of `sequences` whose last chunk is not in flight: they may be scheduled or preempted."""
        return [seq for seq in sequences if seq.request_id not in self.in_flight]

    def _admission_cap(self) -> int:
        return 1 if self.config.scheduling == "request" else self.config.max_num_seqs

    def _make_room_for_fair_share(self, output: SchedulerOutput) -> None:
        """Preempt while the next sequence to admit finds no room and the fair policy names a
        victim (see `WaitingQueue.fair_share_victim`)."""
        while (candidate := self.waiting.peek()) is not None and not self._has_room_for(candidate):
            schedulable = self._schedulable(self.running)
            victim = self.waiting.fair_share_victim(candidate, schedulable, self.config.max_num_seqs)
            if victim is None:
                return
            self.running.remove(victim)
            self._preempt(victim, output)

    def _has_room_for(self, seq: Sequence) -> bool:
        """A free slot, and KV for the first chunk `seq` could run with a whole step's budget."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        return self._admission_plan(seq, self.config.max_num_batched_tokens) is not None

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> tuple[int, bool]:
        """Give running sequences their tokens, oldest first. Returns the budget left, and whether
        a sequence was preempted for want of KV blocks."""
        memory_short = False
        index = 0
        while index < len(self.running) and budget > 0 and len(output.chunks) < self._batch_seq_cap:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget, self._scoring_limit(seq, seq.num_computed_tokens))
            if num_new == 0 or seq.request_id in self.in_flight:
                # It scores its prompt and this step has no scoring room left, or its chunk is in flight.
                index += 1
                continue
            while not self.block_manager.can_append(seq, num_new):
                # Of those not scheduled yet: a scheduled chunk's blocks are keyed in the prefix cache.
                victim = self.waiting.preemption_victim(self._schedulable(self.running[index:]))
                self.running.remove(victim)
                self._preempt(victim, output)
                memory_short = True
                if victim is seq:
                    break
            else:
                self._schedule_chunk(output, seq, num_new)
                budget -= num_new
                index += 1
        return budget, memory_short

    def _admit_waiting(self, output: SchedulerOutput, budget: int) -> None:
        """Move waiting sequences into `running`, in the waiting queue's order, while the pool and
        the caps allow.

        Continuous admits only what the token budget lets run now. Static and request admit a
        whole batch when idle; members beyond this step's budget run in the next steps.
        """
        static_batch = self.config.scheduling != "continuous"
        while len(self.running) < self._admission_cap() and (seq := self.waiting.peek()) is not None:
            if (budget <= 0 and not static_batch) or len(output.chunks) >= self._batch_seq_cap:
                break
            limit = self._scoring_limit(seq, 0)  # a scoring request takes no cached blocks: it starts at 0
            if limit == 0:
                break
            plan = self._admission_plan(seq, min(budget, limit))
            if plan is None:
                break
            cached_block_ids, num_new = plan
            num_cached = len(cached_block_ids) * self.config.block_size
            self.waiting.take(seq)
            self.block_manager.admit(seq, cached_block_ids)
            self.prefix_cache_queried_tokens += seq.num_tokens
            self.prefix_cache_hit_tokens += num_cached
            if seq.num_cached_prompt_tokens is None:
                seq.num_cached_prompt_tokens = min(num_cached, seq.num_prompt_tokens)
                seq.first_scheduled_time = time.time()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if num_new > 0:
                self._schedule_chunk(output, seq, num_new)
                budget -= num_new

    def _admission_plan(self, seq: Sequence, budget: int) -> tuple[list[int], int] | None:
        """The prefix-cache blocks `seq` would take if admitted now, and the tokens after them its
        first chunk computes within `budget`; None if the KV pool cannot hold them."""
        # A request scoring its prompt computes all of it: cached blocks would skip positions.
        cached_block_ids = self.block_manager.match_prefix(seq) if seq.params.prompt_logprobs is None else []
        num_cached = len(cached_block_ids) * self.config.block_size
        num_new = min(seq.num_tokens - num_cached, max(budget, 0))
        if not self.block_manager.can_admit(cached_block_ids, num_cached + num_new):
            return None
        return cached_block_ids, num_new

    def _schedule_chunk(self, output: SchedulerOutput, seq: Sequence, num_new: int) -> None:
        self.block_manager.append(seq, num_new)
        self.waiting.charge_chunk(seq, num_new)
        self.in_flight.add(seq.request_id)
        chunk = self._chunk(seq, num_new)
        self._scoring_room -= len(chunk.prompt_logprob_targets)
        output.chunks.append(chunk)

    def _scoring_limit(self, seq: Sequence, start: int) -> int:
        """The most tokens from position `start` a chunk of `seq` may take in this step without
        scoring more prompt positions than the step has room for (no limit for other requests)."""
        if seq.params.prompt_logprobs is None:
            return seq.num_tokens
        first = max(start, len(seq.prompt_logprobs))  # the first position still to score
        if first >= seq.num_prompt_tokens - 1:
            return seq.num_tokens  # nothing left to score
        return first - start + max(self._scoring_room, 0)

    def _chunk(self, seq: Sequence, num_new: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        reaches_end = start + num_new == seq.num_tokens
        params = seq.params
        needs_prompt = reaches_end and params.has_repetition_penalty
        needs_outputs = needs_prompt or (reaches_end and params.has_penalties)
        return ScheduledChunk(
            request_id=seq.request_id,
            token_ids=seq.token_slice(start, start + num_new),
            start_position=start,
            block_ids=list(seq.block_ids),
            sampling=params if reaches_end else None,
            seed=seq.seed,
            num_output_tokens=seq.num_output_tokens,
            output_token_ids=list(seq.output_token_ids) if needs_outputs else [],
            prompt_token_ids=seq.prompt_token_ids if needs_prompt else [],
            banned_token_ids=self._banned_token_ids(seq) if reaches_end else [],
            **self._prompt_logprob_fields(seq, start, start + num_new),
        )

    @staticmethod
    def _prompt_logprob_fields(seq: Sequence, start: int, end: int) -> dict[str, object]:
        """For a request scoring its prompt, the positions of [start, end) whose logits score the
        next prompt token and were not scored before (a recompute after preemption scores none twice)."""
        if seq.params.prompt_logprobs is None:
            return {}
        # Position p scores prompt token p + 1; positions before `first` were scored already.
        first = max(start, len(seq.prompt_logprobs))
        last = min(end, seq.num_prompt_tokens - 1)
        if first >= last:
            return {}
        return {
            "prompt_logprob_offset": first - start,
            "prompt_logprob_targets": seq.prompt_token_ids[first + 1 : last + 1],
            "prompt_top_logprobs": seq.params.prompt_logprobs,
        }

    def _banned_token_ids(self, seq: Sequence) -> list[int]:
        """While a request has generated fewer than its min_tokens: its stop tokens and EOS."""
        if seq.num_output_tokens >= seq.params.min_tokens:
            return []
        return sorted(self.eos_token_ids | set(seq.params.stop_token_ids))

    def _preempt(self, seq: Sequence, output: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.requeue(seq)
        self.num_preemptions += 1
        output.preempted_ids.append(seq.request_id)
        output.preempted_tenants.append(seq.tenant)

    # ----- update --------------------------------------------------------------------------

    def update(self, output: SchedulerOutput, sampled: SampledTokens) -> list[Sequence]:
        """Advance every scheduled sequence past its chunk and append the sampled tokens.

        Returns the sequences that gained a token (finished ones included, already freed); a
        sequence that ended while its chunk was in flight (an abort) is passed over.
        """
        now = time.time()
        sampled_index = 0
        scored = iter(sampled.prompt_logprobs)
        updated: list[Sequence] = []
        for chunk in output.chunks:
            self.in_flight.discard(chunk.request_id)
            seq = self.sequences.get(chunk.request_id)
            scores = next(scored) if chunk.prompt_logprob_targets else []
            if seq is None:
                sampled_index += chunk.sampling is not None
                continue
            seq.prompt_logprobs.extend(scores)
            is_decode = chunk.sampling is not None and len(chunk.token_ids) == 1 and seq.num_output_tokens > 0
            if not is_decode:
                self.num_prompt_tokens_computed += len(chunk.token_ids)
            seq.num_computed_tokens += len(chunk.token_ids)
            if chunk.sampling is None:
                continue
            if seq.params.max_tokens == 0:  # its prompt is scored: done, nothing generated
                self.finish(seq.request_id, "length")
            else:
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
        if seq.grammar is not None:
            seq.grammar.accept(token_id)
        reason = self._finish_reason(seq, token_id)
        if reason is not None:
            self.finish(seq.request_id, reason)

    def _finish_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        params = seq.params
        if token_id in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and token_id in self.eos_token_ids:
            return "stop"
        if seq.grammar is not None and seq.grammar.is_finished:  # the output is complete
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def mark_finished(self, seq: Sequence, reason: FinishReason) -> None:
        """Finish `seq` (freeing any blocks it holds); `finish` does this for a sequence the
        scheduler holds, the engine for one that never reached it (its grammar was compiling)."""
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_time = time.time()
