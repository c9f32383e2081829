"""The Hugging Face transformers baselines: hf-sequential, hf-static and hf-continuous."""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching import ContinuousBatchingManager

from benchmarks.settings import BenchSettings, RunResult
from benchmarks.workloads import Request, Workload, check_lengths

__all__ = [
    "HF_CONTINUOUS_RESULT_TIMEOUT_S",
    "load_hf_model",
    "hf_decode_tokens_per_s",
    "hf_generate_batch",
    "hf_generate_in_batches",
    "run_hf_generate",
    "run_hf_sequential",
    "run_hf_static",
    "hf_continuous_config",
    "hf_continuous_generate",
    "run_hf_continuous",
    "time_hf_continuous",
]

# Seconds a continuous-batching manager may go without producing a result before the run fails.
HF_CONTINUOUS_RESULT_TIMEOUT_S = 600.0


@cache
def load_hf_model(model_dir: Path, dtype: str = "float32") -> transformers.PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    return model.eval()


@torch.inference_mode()
def hf_decode_tokens_per_s(model: transformers.PreTrainedModel, prompts: list[list[int]], steps: int) -> float:
    """Tokens/s of Hugging Face's own decode forward alone: the prompts (right-aligned, one batch)
    prefilled untimed into a DynamicCache, then `steps` batched one-token forwards timed, each
    feeding back its greedy tokens. No scheduling, sampling or output work: a ceiling for a decode
    step at this batch on this model."""
    pad_id = model.generation_config.pad_token_id or 0
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # (B, P)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, P)
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
    cache, tokens = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    start = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        out = model(input_ids=tokens, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache, tokens = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    return len(prompts) * steps / (time.perf_counter() - start)


def hf_generate_batch(model: transformers.PreTrainedModel, requests: list[Request]) -> list[list[int]]:
    """One left-padded `generate` call; the batch runs to its largest `max_tokens`, each request keeps its own."""
    pad_id = model.generation_config.pad_token_id
    width = max(len(request.prompt) for request in requests)
    input_ids = [[pad_id] * (width - len(request.prompt)) + request.prompt for request in requests]
    attention_mask = [[0] * (width - len(request.prompt)) + [1] * len(request.prompt) for request in requests]
    new_tokens = max(request.max_tokens for request in requests)
    output = model.generate(
        input_ids=torch.tensor(input_ids),
        attention_mask=torch.tensor(attention_mask),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_id,
    )
    generated = output[:, width:].tolist()
    return [token_ids[: request.max_tokens] for request, token_ids in zip(requests, generated)]


def hf_generate_in_batches(
    model: transformers.PreTrainedModel, requests: list[Request], batch_size: int
) -> list[list[int]]:
    generated: list[list[int]] = []
    for start in range(0, len(requests), batch_size):
        generated.extend(hf_generate_batch(model, requests[start : start + batch_size]))
    return generated


def run_hf_generate(
    settings: BenchSettings, workload: Workload, warmup: list[Request], batch_size: int, system: str
) -> RunResult:
    model = load_hf_model(settings.model_dir, settings.dtype)
    with torch.inference_mode():
        hf_generate_in_batches(model, warmup, batch_size)
        start = time.perf_counter()
        generated = hf_generate_in_batches(model, workload.requests, batch_size)
        seconds = time.perf_counter() - start
    check_lengths(workload.requests, generated, system)
    return RunResult(seconds=seconds, output_tokens=workload.output_tokens)


def run_hf_sequential(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_hf_generate(settings, workload, warmup, batch_size=1, system="hf-sequential")


def run_hf_static(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    return run_hf_generate(settings, workload, warmup, batch_size=settings.batch_size, system="hf-static")


def hf_continuous_config(settings: BenchSettings) -> ContinuousBatchingConfig:
    """The engine's limits, in transformers' terms: same KV pool, page size, step budget and batch cap."""
    return ContinuousBatchingConfig(
        page_size=settings.block_size,
        num_blocks=settings.num_kv_blocks,
        max_batch_tokens=settings.max_batched_tokens,
        max_requests_per_batch=settings.batch_size,
        # No flash attention on the CPU: stay on SDPA (and say so, instead of probing for it).
        auto_switch_to_flash=False,
    )


def hf_continuous_generate(
    manager: ContinuousBatchingManager, requests: list[Request], id_prefix: str
) -> list[list[int]]:
    request_ids = [f"{id_prefix}{index}" for index in range(len(requests))]
    for request_id, request in zip(request_ids, requests):
        manager.add_request(request.prompt, request_id=request_id, max_new_tokens=request.max_tokens)
    generated: dict[str, list[int]] = {}
    while len(generated) < len(request_ids):
        result = manager.get_result(timeout=HF_CONTINUOUS_RESULT_TIMEOUT_S)
        if result is None:
            raise RuntimeError("hf-continuous: the generation loop stopped or stalled before every request finished")
        if result.error is not None:
            raise RuntimeError(f"hf-continuous: request {result.request_id} failed: {result.error}")
        if result.is_finished():
            generated[result.request_id] = result.generated_tokens
    return [generated[request_id] for request_id in request_ids]


def run_hf_continuous(settings: BenchSettings, workload: Workload, warmup: list[Request]) -> RunResult:
    model = load_hf_model(settings.model_dir, settings.dtype)
    return time_hf_continuous(model, hf_continuous_config(settings), workload, warmup)


def time_hf_continuous(
    model: transformers.PreTrainedModel,
    config: ContinuousBatchingConfig,
    workload: Workload,
    warmup: list[Request],
) -> RunResult:
    """A fresh continuous-batching manager on `model`, warmed up untimed on `warmup`, timed on `workload`."""
    # Greedy; EOS -1 never matches, so every request runs to its own max_new_tokens.
    generation_config = GenerationConfig(do_sample=False, eos_token_id=-1)
    with model.continuous_batching_context_manager(
        generation_config=generation_config,
        continuous_batching_config=config,
        block=True,
    ) as manager:
        hf_continuous_generate(manager, warmup, "warmup-")
        start = time.perf_counter()
        generated = hf_continuous_generate(manager, workload.requests, "request-")
        seconds = time.perf_counter() - start
    check_lengths(workload.requests, generated, "hf-continuous")
    return RunResult(seconds=seconds, output_tokens=workload.output_tokens)
