"""The synchronous engine: add requests, step, read outputs."""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import TYPE_CHECKING

from engine.config import EngineConfig
from engine.core.grammar_wait import GrammarWait
from engine.core.output_processor import OutputProcessor
from engine.core.scheduler import Scheduler
from engine.core.sequence import DEFAULT_TENANT, Sequence
from engine.core.stats_collector import StatsCollector
from engine.core.tokenizer import eos_token_ids, load_tokenizer
from engine.errors import ContextLengthError, InvalidGrammarError, InvalidPromptError
from engine.hardware import resolve_dtype
from engine.metrics.stats import StatsCallback, never_raising
from engine.outputs import EngineStats, RequestOutput, ShardInfo
from engine.parallel.executor import create_executor
from engine.sampling_params import SamplingParams
from engine.seeds import derive_seed
from engine.step_data import SchedulerOutput
from engine.structured.compiler import GrammarCompiler
from engine.structured.matcher import fill_token_bitmasks

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["LLMEngine", "Prompt"]

logger = logging.getLogger(__name__)

Prompt = str | list[int]

# How long a step with nothing to run waits for a grammar compile before returning.
GRAMMAR_POLL_S = 0.01


class LLMEngine:
    """Continuous batching over a paged KV cache. One step = schedule -> execute -> update."""

    def __init__(self, config: EngineConfig, on_stats: StatsCallback | None = None) -> None:
        """`on_stats`: called with each step's `StepStats` (and an abort's), on the stepping
        thread; e.g. `EngineMetrics.record`. None collects nothing."""
        config = resolve_dtype(config)  # every shard then runs the dtype this node chose
        self.config = config
        self.executor = create_executor(config)
        try:
            model_config = self.executor.model_config
            self.vocab_size: int = model_config.get_text_config().vocab_size
            self.tokenizer: PreTrainedTokenizerBase | None = load_tokenizer(config.tokenizer or config.model)
            self.max_model_len = self.executor.max_model_len
            eos_ids = eos_token_ids(self.executor.generation_config, model_config, self.tokenizer)
            self.scheduler = Scheduler(
                config,
                num_kv_blocks=self.executor.num_kv_blocks,
                max_model_len=self.max_model_len,
                eos_token_ids=eos_ids,
            )
            # Structured output needs the tokenizer (a grammar constrains text, tokens spell it).
            self.grammar_compiler = (
                GrammarCompiler(self.tokenizer, self.vocab_size, eos_ids) if self.tokenizer is not None else None
            )
            self._grammar_wait = GrammarWait()
            self.output_processor = OutputProcessor(self.scheduler, self.tokenizer)
            # Kept for AsyncLLMEngine.from_engine, which reports a failed step's requests through it.
            self.on_stats = on_stats
            self._stats_collector = (
                StatsCollector(self.scheduler, never_raising(on_stats)) if on_stats is not None else None
            )
        except BaseException:
            self.executor.close()  # tensor-parallel shards outlive a failed engine otherwise
            raise
        self._generate_ids = itertools.count()

    # ----- requests -----------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        tenant: str = DEFAULT_TENANT,
        tenant_weight: float = 1.0,
    ) -> list[int]:
        """Queue a request of `tenant`, whose scheduling weight is `tenant_weight` (under fair
        tenant scheduling, a tenant of weight 2 gets twice the service of one of weight 1), and
        return its prompt's token ids. A structured-output request joins the queue once its
        grammar has compiled (on the compiler's thread).

        A prompt the engine refuses raises InvalidPromptError naming the problem
        (ContextLengthError when prompt + max_tokens can never fit); nothing is queued then. A
        request id already in use, a tenant that is not a string or a weight that is not a finite
        number > 0 raise ValueError: a caller's bug, not bad input."""
        params = params or SamplingParams()
        if request_id in self.scheduler.sequences or request_id in self._grammar_wait:
            raise ValueError(f"request_id must be unique, {request_id!r} is already running")
        if request_id in self.scheduler.in_flight:  # aborted, its last chunk not back from the stages yet
            raise ValueError(f"request_id must be unique, {request_id!r} is still in the pipeline")
        self._check_tenant(tenant, tenant_weight)
        prompt_token_ids = self._tokenize(prompt)
        self._check_fits(prompt_token_ids, params)
        self._check_grammar(params)
        seq = Sequence(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            params=params,
            seed=params.seed if params.seed is not None else self._default_seed(request_id),
            tenant=tenant,
            tenant_weight=float(tenant_weight),
        )
        if params.structured_output is not None:
            assert self.grammar_compiler is not None  # _check_grammar refused it otherwise
            self._grammar_wait.add(seq, self.grammar_compiler.matcher(params.structured_output))
        else:
            self.scheduler.add(seq)
        self.output_processor.add(seq)
        return prompt_token_ids

    def abort_request(self, request_id: str) -> bool:
        """End a request and free its KV blocks. False if it is not running or waiting."""
        self.output_processor.discard(request_id)
        seq = self._grammar_wait.remove(request_id)
        if seq is not None:
            self.scheduler.mark_finished(seq, "abort")
        else:
            seq = self.scheduler.finish(request_id, "abort")
        if seq is None:
            return False
        if self._stats_collector is not None:
            self._stats_collector.report_abort(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        """Requests to run, or batches in the pipeline still to hand back (an aborted request's)."""
        return self.scheduler.has_unfinished() or len(self._grammar_wait) > 0 or self.executor.num_in_flight > 0

    def step(self) -> list[RequestOutput]:
        started = time.perf_counter()
        failed = self._admit_compiled()
        batch = self.scheduler.schedule()
        if batch.is_empty and not self.executor.num_in_flight:
            if not failed and len(self._grammar_wait):
                self._grammar_wait.wait(GRAMMAR_POLL_S)  # nothing to run until a grammar compiles
            return failed
        self._fill_grammar_masks(batch)
        done = self.executor.execute(batch)
        if done is None:  # in the pipeline: its tokens come with a later step
            return failed
        executed, sampled = done
        updated = self.scheduler.update(executed, sampled)
        outputs = self.output_processor.process(updated)
        if self._stats_collector is not None:
            self._stats_collector.report_step(executed, updated, time.perf_counter() - started)
        return failed + outputs

    def _admit_compiled(self) -> list[RequestOutput]:
        """Queue the requests whose grammar compiled; end (as aborted, with an output) those whose
        grammar failed to, which validation at add_request makes a rare resource limit."""
        ready, failed = self._grammar_wait.take_ready()
        for seq in ready:
            self.scheduler.add(seq)
        for seq, error in failed:
            logger.error("request %s: its grammar failed to compile: %s", seq.request_id, error)
            self.scheduler.mark_finished(seq, "abort")
            if self._stats_collector is not None:
                self._stats_collector.report_abort(seq)
        return self.output_processor.process([seq for seq, _ in failed])

    def _fill_grammar_masks(self, batch: SchedulerOutput) -> None:
        """Give each sampling chunk of a structured-output request its grammar's token bitmask."""
        sequences = self.scheduler.sequences
        constrained = [
            (chunk, grammar)
            for chunk in batch.chunks
            if chunk.sampling is not None and (grammar := sequences[chunk.request_id].grammar) is not None
        ]
        masks = fill_token_bitmasks([grammar for _, grammar in constrained], self.vocab_size)
        for (chunk, _), mask in zip(constrained, masks):
            chunk.allowed_token_bitmask = mask

    def generate(
        self, prompts: list[Prompt], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order. `params`: one for all, or one each."""
        params_list = self._params_per_prompt(prompts, params)
        batch_id = next(self._generate_ids)
        request_ids = [f"generate-{batch_id}-{i}" for i in range(len(prompts))]
        for request_id, prompt, prompt_params in zip(request_ids, prompts, params_list):
            try:
                self.add_request(request_id, prompt, prompt_params)
            except ValueError:
                for queued_id in request_ids:
                    self.abort_request(queued_id)
                raise
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(request_ids):
            for output in self.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in request_ids]

    @property
    def context_limit(self) -> int:
        """The most tokens (prompt + max_tokens) one request can ever have: the model's context, or
        the whole KV pool when that is smaller (the last sampled token is never fed back, so it
        takes no cache slot)."""
        block_manager = self.scheduler.block_manager
        return min(self.max_model_len, block_manager.num_blocks * block_manager.block_size + 1)

    def shards(self) -> list[ShardInfo]:
        """Each shard's rank, Ray node, device and stored weight bytes (one entry when TP=1)."""
        return self.executor.shards()

    def check_health(self) -> None:
        """Raise EngineDeadError if a part of the model (a tensor-parallel shard) is gone."""
        self.executor.check_health()

    def close(self) -> None:
        """Release the model's shards (tensor-parallel actors); the engine serves no more."""
        if self.grammar_compiler is not None:
            self.grammar_compiler.close()
        self.executor.close()

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        block_manager = scheduler.block_manager
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting) + len(self._grammar_wait),
            num_preemptions=scheduler.num_preemptions,
            kv_blocks_total=block_manager.num_blocks,
            kv_blocks_used=block_manager.num_used_blocks,
            kv_tokens_stored=block_manager.num_tokens_stored(scheduler.running),
            block_size=block_manager.block_size,
            prefix_cache_queried_tokens=scheduler.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=scheduler.prefix_cache_hit_tokens,
            num_prompt_tokens_computed=scheduler.num_prompt_tokens_computed,
            num_generation_tokens=scheduler.num_generation_tokens,
        )

    # ----- validation ---------------------------------------------------------------------

    def _tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidPromptError("prompt must not be empty")
            if self.tokenizer is None:
                raise InvalidPromptError("prompt must be token ids: this model has no tokenizer")
            token_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, list):
            token_ids = prompt
        else:
            raise InvalidPromptError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not token_ids:
            raise InvalidPromptError("prompt must not be empty")
        for token_id in token_ids:
            if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < self.vocab_size:
                raise InvalidPromptError(
                    f"prompt token ids must be integers in [0, {self.vocab_size}), got {token_id!r}"
                )
        return list(token_ids)

    def _check_fits(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ContextLengthError for a request that could never run, even on an idle engine
        (and InvalidPromptError for a logit_bias or stop token id the vocabulary does not have)."""
        for name, token_ids in (("logit_bias", list(params.logit_bias)), ("stop_token_ids", params.stop_token_ids)):
            outside = [token_id for token_id in token_ids if token_id >= self.vocab_size]
            if outside:
                raise InvalidPromptError(f"{name} token ids must be in [0, {self.vocab_size}), got {outside[0]}")
        # A request generating nothing still holds its whole prompt's KV (its last token included).
        num_tokens = len(prompt_token_ids) + max(params.max_tokens, 1)
        if num_tokens > self.max_model_len:
            raise ContextLengthError(
                f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({params.max_tokens}) must be "
                f"<= max_model_len ({self.max_model_len})"
            )
        if num_tokens > self.context_limit:
            block_manager = self.scheduler.block_manager
            raise ContextLengthError(
                f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({params.max_tokens}) needs "
                f"{block_manager.blocks_needed(num_tokens - 1)} KV blocks, more than the pool's "
                f"{block_manager.num_blocks}"
            )

    def _check_grammar(self, params: SamplingParams) -> None:
        """Raise InvalidGrammarError for a structured output that cannot compile (or a model
        without a tokenizer, which structured output needs)."""
        if params.structured_output is None:
            return
        if self.grammar_compiler is None:
            raise InvalidGrammarError("structured output needs the model's tokenizer, and this model has none")
        self.grammar_compiler.validate(params.structured_output)

    @staticmethod
    def _check_tenant(tenant: str, tenant_weight: float) -> None:
        """Raise ValueError for a tenant that is not a string, or a weight that is not a finite
        number > 0 (callers may pass anything: annotations are not checked at run time)."""
        if not isinstance(tenant, str):
            raise ValueError(f"tenant must be a string, got {type(tenant).__name__}")
        is_number = isinstance(tenant_weight, (int, float)) and not isinstance(tenant_weight, bool)
        if not (is_number and math.isfinite(tenant_weight) and tenant_weight > 0):
            raise ValueError(f"tenant_weight must be a finite number > 0, got {tenant_weight!r}")

    def _default_seed(self, request_id: str) -> int:
        return derive_seed(self.config.seed, request_id)

    @staticmethod
    def _params_per_prompt(
        prompts: list[Prompt], params: SamplingParams | list[SamplingParams] | None
    ) -> list[SamplingParams]:
        if isinstance(params, list):
            if len(params) != len(prompts):
                raise ValueError(
                    f"params must be one SamplingParams or one per prompt ({len(prompts)}), got {len(params)}"
                )
            return params
        return [params or SamplingParams()] * len(prompts)
