"""LLMServer: one model's Serve deployment. Each replica owns an `AsyncLLMEngine`.

Router ──handle.generate(GenerationRequest)──▶ LLMServer replica
                                                │ prompt -> token ids, max_tokens
                                                │ n engine requests, merged into one stream
                                                ▼
                               async generator of GenerationChunk ──▶ Router
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from autoscaling import LoadSignals
from deployments.config import ModelConfig
from deployments.errors import ApiError, invalid_request
from deployments.generation import GenerationChunk, GenerationRequest, Tokenized, TokenizeRequest, TokenLogprob
from deployments.observability.ray_metrics import RayMetricsBackend
from deployments.replica.engine_client import EngineClient
from deployments.replica.model_source import resolve_model_source
from deployments.replica.prompts import PromptBuilder
from engine import EngineConfig, EngineStats, InvalidPromptError, RequestOutput, SamplingParams, ShardInfo
from engine.metrics import EngineMetrics

__all__ = ["EngineFactory", "LLMServer", "default_engine_factory"]

logger = logging.getLogger("ray.serve")

# Builds the replica's engine from its config and its model's settings (not yet started).
EngineFactory = Callable[[EngineConfig, ModelConfig], EngineClient]


def default_engine_factory(config: EngineConfig, model: ModelConfig) -> EngineClient:
    """The real engine: AsyncLLMEngine, in a child process unless the settings say otherwise
    (imported here, so building the app loads no torch), recording its metrics through Ray's."""
    from engine import AsyncLLMEngine

    on_stats = EngineMetrics(RayMetricsBackend(), model.name).record
    if model.uses_engine_process:
        return AsyncLLMEngine(config, engine_process=True, num_threads=_process_threads(model), on_stats=on_stats)
    if model.engine.device == "cpu":
        import torch  # the engine loads it anyway; building the app does not

        torch.set_num_threads(cpu_threads(model))
    return AsyncLLMEngine(config, on_stats=on_stats)


def _process_threads(model: ModelConfig) -> int | None:
    return cpu_threads(model) if model.engine.device == "cpu" else None


class LLMServer:
    """Serves one model. Construction loads the weights; Serve health-checks the engine after.

    `engine_factory` is the test seam: a fake engine stands in for the real one.
    """

    async def __init__(self, model: ModelConfig, engine_factory: EngineFactory = default_engine_factory) -> None:
        self.model = model
        # Requests in this replica now, and since when it has had none (for idleness).
        self._in_flight = 0
        # The replica's start, for the cold-start log of its first token.
        self._created = time.perf_counter()
        self._ready_after_s: float | None = None
        self._first_token_logged = False
        started = self._created
        source = await asyncio.to_thread(resolve_model_source, model.source)
        self.engine = engine_factory(model.engine.to_engine_config(source), model)
        await self.engine.start(timeout_s=model.engine.start_timeout_s)
        stats = await self.engine.stats()
        shards = await self.engine.shards()
        self.prompts = PromptBuilder(self.engine.tokenizer, self.engine.context_limit, model.name)
        self._idle_since = time.monotonic()  # idle from now on: the load time is not idleness
        self._ready_after_s = time.perf_counter() - started
        logger.info(
            "%s: engine ready in %.1fs (weights loaded in %.1fs from %s: %s; context limit %d tokens; %d KV blocks "
            "of %d tokens)",
            model.deployment_name,
            self._ready_after_s,
            self.engine.load_seconds or 0.0,
            source,
            describe_weights(shards),
            self.engine.context_limit,
            stats.kv_blocks_total,
            stats.block_size,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | ApiError]:
        """Stream the request's choices.

        A request the model refuses (bad prompt, too long, bad token ids) ends its stream with an
        ApiError as a value: it is the client's problem, not a replica failure to log and raise.
        """
        self._in_flight += 1
        try:
            async for item in self._generate(request):
                if not self._first_token_logged:
                    self._first_token_logged = True
                    logger.info(
                        "%s: first token %.1fs after the replica was created (engine ready after %.1fs)",
                        self.model.deployment_name,
                        time.perf_counter() - self._created,
                        self._ready_after_s or 0.0,
                    )
                yield item
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle_since = time.monotonic()

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | ApiError]:
        try:
            # Off the event loop: a long prompt or chat template would stall every stream.
            prompt_token_ids = await asyncio.to_thread(self.prompts.prompt_token_ids, request)
            params = dataclasses.replace(
                request.params, max_tokens=self.prompts.max_tokens(request, len(prompt_token_ids))
            )
        except ApiError as error:
            yield error
            return
        queue: asyncio.Queue[GenerationChunk | BaseException | None] = asyncio.Queue()
        choices = [
            asyncio.create_task(self._run_choice(request, index, prompt_token_ids, params, queue))
            for index in range(request.n)
        ]
        try:
            async for chunk in self._drain(queue, request):
                yield chunk
        except InvalidPromptError as error:  # the engine refused the prompt; other errors are ours
            yield invalid_request(error, request.prompt_param, request.structured_param)
        finally:
            for choice in choices:
                choice.cancel()  # a choice still running is aborted; its KV blocks are freed
            await asyncio.gather(*choices, return_exceptions=True)

    async def tokenize(self, request: TokenizeRequest) -> Tokenized | ApiError:
        """/tokenize with this model's tokenizer (an ApiError value for a request it refuses)."""
        try:
            return await asyncio.to_thread(self.prompts.tokenize, request)
        except ApiError as error:
            return error

    async def detokenize(self, token_ids: list[int]) -> str | ApiError:
        """/detokenize with this model's tokenizer (an ApiError value for ids it does not have)."""
        try:
            return await asyncio.to_thread(self.prompts.detokenize, token_ids)
        except ApiError as error:
            return error

    async def stats(self) -> EngineStats:
        """The engine's load and counters, for the router and the autoscaler."""
        return await self.engine.stats()

    async def load_signals(self) -> LoadSignals:
        """The replica's load as the router and the autoscaler read it: engine sequences waiting
        and running, the share of KV blocks in use, seconds without any request (0 while busy), and
        the requests in the replica."""
        stats = await self.engine.stats()
        return LoadSignals(
            num_waiting=float(stats.num_waiting),
            num_running=float(stats.num_running),
            kv_usage=stats.kv_usage,
            idle_s=0.0 if self._in_flight else time.monotonic() - self._idle_since,
            num_requests=float(self._in_flight),
        )

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler calls this on every replica; the policy reads the figures."""
        return (await self.load_signals()).to_metrics()

    async def record_routing_stats(self) -> dict[str, float]:
        """Serve's request router calls this on every replica between fresh probes."""
        return (await self.load_signals()).to_metrics()

    async def shards(self) -> list[ShardInfo]:
        """Where the model's shards run: rank, Ray node, device, weight bytes, process id."""
        return await self.engine.shards()

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it (a
        dead tensor-parallel shard counts)."""
        await self.engine.check_health()

    def __del__(self) -> None:
        # Serve calls this once the replica's in-flight requests have drained (or after
        # graceful_shutdown_timeout_s); garbage collection may call it too, even after a failed start.
        engine: EngineClient | None = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    # ----- choices ------------------------------------------------------------------------

    async def _run_choice(
        self,
        request: GenerationRequest,
        index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        queue: asyncio.Queue[GenerationChunk | BaseException | None],
    ) -> None:
        # Choices of one seeded request differ from each other, and are each reproducible.
        if request.n > 1 and params.seed is not None:
            params = dataclasses.replace(params, seed=params.seed + index)
        # Streaming, a choice takes the engine's news once per interval (the first and the last at
        # once): the steps in between arrive merged, so the Serve and HTTP hops carry one message
        # per interval instead of one per engine step. Not streaming, only the end matters (None).
        interval_s = self.model.stream_interval_ms / 1000 if request.stream else None
        try:
            stream = self.engine.generate(
                f"{request.request_id}-{index}",
                prompt_token_ids,
                params,
                interval_s,
                tenant=request.tenant,
                tenant_weight=request.tenant_weight,
            )
            first = True
            async for output in stream:
                chunk = self._to_chunk(index, output, params)
                if first and request.echo:
                    chunk.prompt_text = self.prompts.text_of(prompt_token_ids)
                first = False
                queue.put_nowait(chunk)
        except Exception as error:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait(error)
        finally:
            queue.put_nowait(None)

    async def _drain(
        self, queue: asyncio.Queue[GenerationChunk | BaseException | None], request: GenerationRequest
    ) -> AsyncIterator[GenerationChunk]:
        """Chunks as the choices send them, a choice's backlog merged; whole choices if not streaming."""
        num_running = request.n
        pending: dict[int, GenerationChunk] = {}
        while num_running:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    num_running -= 1
                elif item.index in pending:
                    pending[item.index] = _merge(pending[item.index], item)
                else:
                    pending[item.index] = item
            ready = [index for index, chunk in pending.items() if _is_ready(chunk, request.stream)]
            for index in sorted(ready):
                yield pending.pop(index)

    def _to_chunk(self, index: int, output: RequestOutput, params: SamplingParams) -> GenerationChunk:
        logprobs = None
        if params.logprobs:
            token_text = self.prompts.token_text
            logprobs = [
                TokenLogprob(
                    token=token_text(token_id),
                    logprob=logprob,
                    top=[(token_text(top_id), top_logprob) for top_id, top_logprob in top],
                )
                for token_id, logprob, top in zip(
                    output.new_token_ids,
                    output.new_logprobs,
                    output.new_top_logprobs or [[] for _ in output.new_token_ids],
                )
            ]
        return GenerationChunk(
            index=index,
            text=output.delta_text,
            token_ids=output.new_token_ids,
            logprobs=logprobs,
            finish_reason=output.finish_reason,
            num_prompt_tokens=len(output.prompt_token_ids),
            num_generated_tokens=output.num_generated_tokens,
            num_cached_tokens=output.num_cached_tokens,
            prompt_token_texts=self._prompt_token_texts(output),
            prompt_logprobs=self._prompt_logprobs(output),
        )

    def _prompt_token_texts(self, output: RequestOutput) -> list[str] | None:
        if output.new_prompt_logprobs is None:
            return None
        return [self.prompts.token_text(token_id) for token_id in output.prompt_token_ids]

    def _prompt_logprobs(self, output: RequestOutput) -> list[TokenLogprob] | None:
        """The engine's prompt logprobs with each token's text (the first prompt token has none)."""
        if output.new_prompt_logprobs is None:
            return None
        token_text = self.prompts.token_text
        scored = []
        for token_id, entry in zip(output.prompt_token_ids[1:], output.new_prompt_logprobs[1:]):
            assert entry is not None  # only the first prompt token has no logprob
            logprob, top = entry
            texts = [(token_text(t), lp) for t, lp in top]
            scored.append(TokenLogprob(token_text(token_id), logprob, texts, token_id, [t for t, _ in top]))
        return scored


def describe_weights(shards: list[ShardInfo]) -> str:
    """'weights 12.5 MiB on cpu', or per shard: 'weights 12.5 MiB in 2 shards (rank 0: 6.3 MiB on cpu, node ab12..)',
    each shard named 'stage S rank R' when the model has pipeline stages."""
    total = sum(shard.weight_bytes for shard in shards) / 2**20
    if len(shards) == 1:
        return f"weights {total:.1f} MiB on {shards[0].device}"
    staged = any(shard.stage > 0 for shard in shards)
    parts = ", ".join(
        f"{f'stage {shard.stage} ' if staged else ''}rank {shard.rank}: {shard.weight_bytes / 2**20:.1f} MiB on "
        f"{shard.device}, node {(shard.node_id or '?')[:8]}"
        for shard in shards
    )
    return f"weights {total:.1f} MiB in {len(shards)} shards ({parts})"


def cpu_threads(model: ModelConfig) -> int:
    """Torch threads for a CPU engine: the CPUs its replica reserves (at least one).

    More threads than reserved CPUs oversubscribe the machine: a parallel op then waits on
    threads that the router, the proxy or another replica have pushed off their cores.
    """
    return max(1, int(model.deployment.ray_actor_options.num_cpus))


def _is_ready(chunk: GenerationChunk, stream: bool) -> bool:
    """Whole choices when not streaming; otherwise any chunk with something to show."""
    if chunk.finish_reason is not None:
        return True
    # A token that only starts a multi-byte character, or may start a stop string, has no text yet.
    return stream and bool(chunk.text or chunk.logprobs)


def _merge(earlier: GenerationChunk, later: GenerationChunk) -> GenerationChunk:
    """One chunk saying what the two consecutive chunks of a choice say."""
    logprobs = None if earlier.logprobs is None else earlier.logprobs + (later.logprobs or [])
    return dataclasses.replace(
        later,
        text=earlier.text + later.text,
        token_ids=earlier.token_ids + later.token_ids,
        logprobs=logprobs,
        prompt_token_texts=earlier.prompt_token_texts or later.prompt_token_texts,
        prompt_text=earlier.prompt_text if earlier.prompt_text is not None else later.prompt_text,
        prompt_logprobs=earlier.prompt_logprobs if earlier.prompt_logprobs is not None else later.prompt_logprobs,
    )
