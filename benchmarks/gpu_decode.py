"""Sections 2, 5 and 7 of the GPU check: batch-1 decode against the memory roofline, bitsandbytes
int8 and nf4 against bfloat16, and CUDA graphs (which the engine does not have)."""

from __future__ import annotations

import importlib.util
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel

from benchmarks.gpu_agreement import same_token_fraction
from benchmarks.gpu_context import CheckContext
from benchmarks.gpu_device import Bandwidth, synchronize
from benchmarks.gpu_models import ModelShape, load_reference_model, ordinary_tokens
from benchmarks.gpu_roofline import decode_bytes_per_token, decode_tokens_per_s, roofline_tokens_per_s
from benchmarks.gpu_tables import Column, Table
from benchmarks.workloads import random_tokens
from engine import LLMEngine, SamplingParams, kv_cache_shape
from engine.config import Quantization

__all__ = ["QUANTIZATION_VARIANTS", "DecodeRun", "cuda_graphs", "decode_roofline", "quantization"]

# Section 5's variants: name -> EngineConfig.quantization; each computes in bfloat16.
QUANTIZATION_VARIANTS: dict[str, Quantization | None] = {"bf16": None, "int8": "int8", "nf4": "nf4"}


@dataclass(frozen=True)
class DecodeRun:
    system: str
    weight_bytes: int
    tokens_per_s: float


def decode_roofline(context: CheckContext, tables: list[Table], shape: ModelShape) -> None:
    """Section 2: one request decoding alone, engine and transformers, against bandwidth / bytes per token."""
    sizes = context.sizes
    bandwidth = context.memory_bandwidth()
    tables.append(_bandwidth_table(bandwidth))
    model_dir = context.model_dir(shape)
    prompt = random_tokens(random.Random(4), ordinary_tokens(shape), sizes.decode_prompt_tokens)
    kv_bytes = kv_cache_shape(AutoConfig.from_pretrained(model_dir), context.dtype).bytes_per_token
    mean_context = sizes.decode_prompt_tokens + sizes.decode_tokens / 2
    table = Table(
        f"{shape.name}, {context.dtype}: batch 1, {sizes.decode_prompt_tokens}-token prompt, "
        f"{sizes.decode_tokens} new tokens",
        [
            Column("system"),
            Column("read/token MB", ",.1f"),
            Column("tok/s", ",.1f"),
            Column("ms/token", ".2f"),
            Column("roofline tok/s", ",.0f"),
            Column("of roofline", ".1%"),
            Column("datasheet roofline", ",.0f"),
        ],
    )
    table.notes.append(
        f"read/token = weights + {mean_context:.0f} mean context tokens x {kv_bytes:,} KV bytes; "
        "roofline = measured copy bandwidth / read/token"
    )
    tables.append(table)
    for measure in (_engine_decode, _hf_decode):
        decode = measure(context, model_dir, prompt)
        read_bytes = decode_bytes_per_token(decode.weight_bytes, kv_bytes, mean_context)
        roofline = roofline_tokens_per_s(read_bytes, bandwidth.measured)
        datasheet = None if bandwidth.datasheet is None else roofline_tokens_per_s(read_bytes, bandwidth.datasheet)
        rate = decode.tokens_per_s
        table.add_row(decode.system, read_bytes / 1e6, rate, 1e3 / rate, roofline, rate / roofline, datasheet)
        print(f"  {decode.system}: {rate:,.1f} tok/s at batch 1, {rate / roofline:.1%} of {roofline:,.0f}", flush=True)


def quantization(context: CheckContext, tables: list[Table]) -> None:
    """Section 5: weight bytes, batched and batch-1 tok/s, and tokens of int8 and nf4 against bfloat16."""
    sizes = context.sizes
    model_dir = context.model_dir(sizes.model)
    rng = random.Random(5)
    vocabulary = ordinary_tokens(sizes.model)
    prompts = [random_tokens(rng, vocabulary, rng.randint(16, sizes.max_prompt)) for _ in range(sizes.quant_prompts)]
    table = Table(
        f"{sizes.model.name}: {sizes.quant_prompts} prompts x {sizes.quant_tokens} tokens batched; "
        f"batch 1 x {sizes.decode_tokens} tokens",
        [
            Column("variant"),
            Column("weights MB", ",.1f"),
            Column("vs bf16", ".3f"),
            Column("batch tok/s", ",.0f"),
            Column("vs bf16", ".2f"),
            Column("batch-1 tok/s", ",.1f"),
            Column("vs bf16", ".2f"),
            Column("same tokens", ".1%"),
        ],
    )
    table.notes.append("weights as stored (with int8 scales, nf4 absmax); embeddings, norms and LM head stay bf16")
    table.notes.append("same tokens: share of the batch's greedy tokens equal to bf16's at the same position")
    tables.append(table)
    baseline: _VariantResult | None = None
    for name, method in QUANTIZATION_VARIANTS.items():
        if method is not None and importlib.util.find_spec("bitsandbytes") is None:
            table.notes.append(f"{name}: bitsandbytes is not installed in this Python")
            continue
        try:
            result = _run_variant(context, model_dir, method, prompts)
        except Exception as error:  # noqa: BLE001 - one variant failing leaves the others' rows
            table.notes.append(f"{name}: failed: {type(error).__name__}: {error}")
            continue
        baseline = result if method is None else baseline
        table.add_row(name, *result.cells(baseline))
        megabytes, tokens_per_s = result.weight_bytes / 1e6, result.batch_tokens_per_s
        print(f"  {name}: {megabytes:,.1f} MB of weights, {tokens_per_s:,.0f} tok/s batched", flush=True)


def cuda_graphs(tables: list[Table]) -> None:
    """Section 7: the engine captures no CUDA graphs; say so rather than measure something else."""
    table = Table("CUDA graphs", [Column("feature"), Column("status"), Column("consequence")])
    table.add_row("CUDA graphs", "not implemented", "every step launches its kernels from eager PyTorch")
    table.notes.append("section 2's gap to the roofline bounds what capturing the decode step could win")
    tables.append(table)


def _bandwidth_table(bandwidth: Bandwidth) -> Table:
    table = Table("memory bandwidth", [Column("source"), Column("TB/s", ".2f")])
    table.add_row(f"measured: {bandwidth.method}", bandwidth.measured / 1e12)
    table.add_row("datasheet", None if bandwidth.datasheet is None else bandwidth.datasheet / 1e12)
    return table


@dataclass(frozen=True)
class _VariantResult:
    weight_bytes: int
    batch_tokens_per_s: float
    decode_tokens_per_s: float
    token_ids: list[list[int]]

    def cells(self, baseline: _VariantResult | None) -> tuple[float | None, ...]:
        """The row's values; the comparisons are None without a bf16 run to compare with."""
        if baseline is None:
            return (self.weight_bytes / 1e6, None, self.batch_tokens_per_s, None, self.decode_tokens_per_s, None, None)
        return (
            self.weight_bytes / 1e6,
            self.weight_bytes / baseline.weight_bytes,
            self.batch_tokens_per_s,
            self.batch_tokens_per_s / baseline.batch_tokens_per_s,
            self.decode_tokens_per_s,
            self.decode_tokens_per_s / baseline.decode_tokens_per_s,
            same_token_fraction(self.token_ids, baseline.token_ids),
        )


def _run_variant(
    context: CheckContext, model_dir: Path, method: Quantization | None, prompts: list[list[int]]
) -> _VariantResult:
    sizes = context.sizes
    config = context.engine_config(model_dir, len(prompts), dtype="bfloat16", quantization=method)
    engine = LLMEngine(config)
    engine.generate(prompts[:2], _greedy(4))  # untimed warm-up
    start = time.perf_counter()
    outputs = engine.generate(prompts, _greedy(sizes.quant_tokens))
    seconds = time.perf_counter() - start
    return _VariantResult(
        weight_bytes=engine.shards()[0].weight_bytes,
        batch_tokens_per_s=len(prompts) * sizes.quant_tokens / seconds,
        decode_tokens_per_s=_decode_rate(engine, prompts[0], sizes.decode_tokens),
        token_ids=[output.token_ids for output in outputs],
    )


def _engine_decode(context: CheckContext, model_dir: Path, prompt: list[int]) -> DecodeRun:
    engine = LLMEngine(context.engine_config(model_dir, max_num_seqs=1))
    engine.generate([prompt], _greedy(4))  # untimed warm-up
    rate = _decode_rate(engine, prompt, context.sizes.decode_tokens)
    return DecodeRun("engine", engine.shards()[0].weight_bytes, rate)


def _decode_rate(engine: LLMEngine, prompt: list[int], num_tokens: int) -> float:
    """Tokens/s of one request decoding alone, from its first token to its last."""
    timing = engine.generate([prompt], _greedy(num_tokens))[0].timing
    assert timing.first_token is not None and timing.finish is not None  # a finished request has both
    return decode_tokens_per_s(num_tokens, timing.first_token, timing.finish)


def _hf_decode(context: CheckContext, model_dir: Path, prompt: list[int]) -> DecodeRun:
    """transformers' `generate` (dynamic KV cache, SDPA): the time of N tokens less that of one."""
    model = load_reference_model(model_dir, context.torch_dtype, context.device)
    num_tokens = context.sizes.decode_tokens
    _time_hf_generate(model, prompt, 4, context.device)  # untimed warm-up
    first = _time_hf_generate(model, prompt, 1, context.device)
    full = _time_hf_generate(model, prompt, num_tokens, context.device)
    weight_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    return DecodeRun("hf generate", weight_bytes, decode_tokens_per_s(num_tokens, first, full))


def _time_hf_generate(model: PreTrainedModel, prompt: list[int], num_tokens: int, device: str) -> float:
    input_ids = torch.tensor([prompt], device=device)  # (1, P)
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
        )
    synchronize(device)
    return time.perf_counter() - start


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
