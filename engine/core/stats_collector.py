"""Builds the `StepStats` an engine reports after each step (and after an abort between steps),
and hands each to the engine's `on_stats` callback.

Reads the scheduler's counters as deltas since the last report, the sequences that gained tokens,
and the running and waiting queues; keeps only each running request's last token time (for the
inter-token latency). Plain Python: no torch.
"""

from __future__ import annotations

import time
from collections import Counter

from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.metrics.stats import FinishedRequestStats, StatsCallback, StepStats, TokenLatency
from engine.step_data import SchedulerOutput

__all__ = ["StatsCollector"]


class StatsCollector:
    def __init__(self, scheduler: Scheduler, on_stats: StatsCallback) -> None:
        self.scheduler = scheduler
        self.on_stats = on_stats
        # When each request that has tokens last got one (time.time() seconds).
        self._last_token_time: dict[str, float] = {}
        self._num_prompt_tokens_computed = scheduler.num_prompt_tokens_computed
        self._prefix_cache_queried_tokens = scheduler.prefix_cache_queried_tokens
        self._prefix_cache_hit_tokens = scheduler.prefix_cache_hit_tokens

    def report_step(self, batch: SchedulerOutput, updated: list[Sequence], step_duration_s: float) -> None:
        """Report a step that ran `batch` and appended tokens to `updated`."""
        now = time.time()
        stats = StepStats(step_duration_s=step_duration_s, num_scheduled_tokens=batch.num_batched_tokens)
        stats.preemptions = dict(Counter(batch.preempted_tenants))
        prompt_tokens: Counter[str] = Counter()
        generation_tokens: Counter[str] = Counter()
        for seq in updated:
            if seq.num_output_tokens == 0:  # it scored its prompt and generated nothing
                prompt_tokens[seq.tenant] += seq.num_prompt_tokens
                self._finish(seq, stats)
                continue
            generation_tokens[seq.tenant] += 1
            previous = self._last_token_time.get(seq.request_id)
            if previous is None:
                prompt_tokens[seq.tenant] += seq.num_prompt_tokens
                first_token = seq.first_token_time if seq.first_token_time is not None else now
                stats.token_latencies.append(TokenLatency(seq.tenant, first_token - seq.arrival_time, True))
                previous = first_token
            else:
                stats.token_latencies.append(TokenLatency(seq.tenant, now - previous, False))
                previous = now
            if seq.is_finished:
                self._finish(seq, stats)
            else:
                self._last_token_time[seq.request_id] = previous
        stats.prompt_tokens = dict(prompt_tokens)
        stats.generation_tokens = dict(generation_tokens)
        self._read_counters(stats)
        self.on_stats(stats)

    def report_abort(self, seq: Sequence) -> None:
        """Report an abort between steps: `seq` left, nothing ran."""
        stats = StepStats()
        self._finish(seq, stats)
        self._read_counters(stats)
        self.on_stats(stats)

    def _finish(self, seq: Sequence, stats: StepStats) -> None:
        self._last_token_time.pop(seq.request_id, None)
        assert seq.finish_reason is not None and seq.finish_time is not None  # set when it finished
        stats.finished.append(
            FinishedRequestStats(
                tenant=seq.tenant,
                finish_reason=seq.finish_reason,
                num_prompt_tokens=seq.num_prompt_tokens,
                num_generation_tokens=seq.num_output_tokens,
                arrival=seq.arrival_time,
                first_scheduled=seq.first_scheduled_time,
                first_token=seq.first_token_time,
                finish=seq.finish_time,
            )
        )

    def _read_counters(self, stats: StepStats) -> None:
        """Counter deltas since the last report, and the load now."""
        scheduler = self.scheduler
        stats.num_prompt_tokens_computed = scheduler.num_prompt_tokens_computed - self._num_prompt_tokens_computed
        stats.prefix_cache_queried_tokens = scheduler.prefix_cache_queried_tokens - self._prefix_cache_queried_tokens
        stats.prefix_cache_hit_tokens = scheduler.prefix_cache_hit_tokens - self._prefix_cache_hit_tokens
        self._num_prompt_tokens_computed = scheduler.num_prompt_tokens_computed
        self._prefix_cache_queried_tokens = scheduler.prefix_cache_queried_tokens
        self._prefix_cache_hit_tokens = scheduler.prefix_cache_hit_tokens
        stats.num_running = dict(Counter(seq.tenant for seq in scheduler.running))
        stats.num_waiting = dict(Counter(seq.tenant for seq in scheduler.waiting))
        block_manager = scheduler.block_manager
        stats.kv_cache_usage = (
            block_manager.num_used_blocks / block_manager.num_blocks if block_manager.num_blocks else 0.0
        )
