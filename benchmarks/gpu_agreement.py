"""Section 6 of the GPU check: the engine's greedy tokens and logprobs against transformers'
`generate` on the same weights, device and dtype.

The engine runs every prompt in one batch; transformers runs each alone (SDPA, dynamic cache), so
agreement also shows that the engine's tokens do not depend on what shares the batch. Up to and
including the first token where the two differ both saw the same context, so their logprobs of
the engine's token there are compared; past it nothing is. In float32 (the CPU run) every token
must match and every logprob be within `LOGPROB_TOLERANCES["float32"]`, as in the engine's tests.
In bfloat16 rounding can tip a near-tie either way, so a difference is explained when
transformers' own token leads the engine's by at most twice the tolerance (the error of each
side); the check needs logprobs within tolerance and no unexplained difference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from benchmarks.gpu_context import CheckContext
from benchmarks.gpu_models import load_reference_model, ordinary_tokens
from benchmarks.gpu_tables import Column, Table
from benchmarks.workloads import random_tokens
from engine import LLMEngine, SamplingParams
from engine.config import DType

__all__ = [
    "LOGPROB_TOLERANCES",
    "SequenceAgreement",
    "agreement_verdict",
    "compare_sequence",
    "hf_agreement",
    "num_unexplained",
    "same_token_fraction",
]

# Largest |engine - transformers| logprob of the same token in the same context, by dtype:
# float32 as the engine's tests; bfloat16 keeps 8 significant bits, so logits of a few units are
# off by a few hundredths after each rounding and a deep model compounds them (a 24-layer
# check model in bfloat16 on a CPU differs by up to 0.15); float16 has 3 more bits.
LOGPROB_TOLERANCES: dict[DType, float] = {"float32": 1e-4, "bfloat16": 0.3, "float16": 0.05}


@dataclass(frozen=True)
class SequenceAgreement:
    num_tokens: int
    # Index of the first token where the engine and transformers differ; num_tokens when none does.
    first_difference: int
    # Largest |engine logprob - transformers' logprob of the engine's token| over the tokens up to
    # and including first_difference, where both saw the same context.
    max_logprob_diff: float
    # At first_difference, how far transformers' own token leads the engine's in its logprobs;
    # 0.0 when no token differs.
    margin: float

    @property
    def is_identical(self) -> bool:
        return self.first_difference == self.num_tokens


def compare_sequence(
    engine_tokens: list[int],
    engine_logprobs: list[float],
    hf_tokens: list[int],
    hf_logprobs_of_engine_tokens: list[float],
    hf_logprobs_of_hf_tokens: list[float],
) -> SequenceAgreement:
    """One prompt's greedy run by both; transformers' logprobs per step, of either side's token."""
    num_tokens = len(hf_tokens)
    pairs = zip(engine_tokens, hf_tokens, strict=True)
    first = next((index for index, (ours, theirs) in enumerate(pairs) if ours != theirs), num_tokens)
    compared = range(min(first + 1, num_tokens))
    max_diff = max(abs(engine_logprobs[index] - hf_logprobs_of_engine_tokens[index]) for index in compared)
    margin = 0.0
    if first < num_tokens:
        margin = hf_logprobs_of_hf_tokens[first] - hf_logprobs_of_engine_tokens[first]
    return SequenceAgreement(num_tokens, first, max_diff, margin)


def num_unexplained(agreements: list[SequenceAgreement], tolerance: float) -> int:
    """Differences that are no near-tie: transformers' token leads the engine's by over 2 x tolerance."""
    return sum(not agreement.is_identical and agreement.margin > 2 * tolerance for agreement in agreements)


def agreement_verdict(agreements: list[SequenceAgreement], tolerance: float, require_identical: bool) -> str:
    within = all(agreement.max_logprob_diff <= tolerance for agreement in agreements)
    if require_identical:
        agrees = within and all(agreement.is_identical for agreement in agreements)
    else:
        agrees = within and num_unexplained(agreements, tolerance) == 0
    return "agrees" if agrees else "DISAGREES"


def same_token_fraction(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of reference positions whose token is the same in `tokens`."""
    same = sum(a == b for row, ref in zip(tokens, reference, strict=True) for a, b in zip(row, ref))
    return same / sum(len(ref) for ref in reference)


def hf_agreement(context: CheckContext, tables: list[Table]) -> None:
    """Section 6: greedy tokens and logprobs, engine (one batch) against transformers (each prompt alone)."""
    sizes = context.sizes
    model_dir = context.model_dir(sizes.model)
    rng = random.Random(6)
    vocabulary = ordinary_tokens(sizes.model)
    prompts = [random_tokens(rng, vocabulary, rng.randint(16, 64)) for _ in range(sizes.agree_prompts)]
    params = SamplingParams(max_tokens=sizes.agree_tokens, temperature=0.0, ignore_eos=True, logprobs=True)
    engine = LLMEngine(context.engine_config(model_dir, max_num_seqs=len(prompts)))
    outputs = engine.generate(prompts, params)
    model = load_reference_model(model_dir, context.torch_dtype, context.device)
    prompt_table = Table(
        f"{sizes.model.name}, {context.dtype}, {context.device}: {len(prompts)} prompts x {sizes.agree_tokens} tokens",
        [
            Column("prompt", "d"),
            Column("prompt tok", "d"),
            Column("first difference"),
            Column("max |d logprob|", ".2e"),
            Column("margin there", ".3f"),
        ],
    )
    tables.append(prompt_table)
    agreements: list[SequenceAgreement] = []
    hf_tokens: list[list[int]] = []
    for index, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        tokens, logprobs = _hf_greedy(model, prompt, sizes.agree_tokens, context.device)
        agreement = _compare(output.token_ids, output.logprobs, tokens, logprobs)
        agreements.append(agreement)
        hf_tokens.append(tokens)
        first = "none" if agreement.is_identical else str(agreement.first_difference)
        margin = None if agreement.is_identical else agreement.margin
        prompt_table.add_row(index, len(prompt), first, agreement.max_logprob_diff, margin)
    tables.append(_summary(context.dtype, agreements, [output.token_ids for output in outputs], hf_tokens))


def _summary(
    dtype: DType, agreements: list[SequenceAgreement], engine_tokens: list[list[int]], hf_tokens: list[list[int]]
) -> Table:
    tolerance = LOGPROB_TOLERANCES[dtype]
    require_identical = dtype == "float32"
    table = Table(
        "agreement",
        [
            Column("identical", "d"),
            Column("of", "d"),
            Column("same tokens", ".1%"),
            Column("max |d logprob|", ".2e"),
            Column("tolerance", "g"),
            Column("unexplained", "d"),
            Column("verdict"),
        ],
    )
    table.add_row(
        sum(agreement.is_identical for agreement in agreements),
        len(agreements),
        same_token_fraction(engine_tokens, hf_tokens),
        max(agreement.max_logprob_diff for agreement in agreements),
        tolerance,
        num_unexplained(agreements, tolerance),
        agreement_verdict(agreements, tolerance, require_identical),
    )
    rule = "every token identical" if require_identical else "differences only at near-ties (margin <= 2 x tolerance)"
    table.notes.append(f"{dtype}: logprobs within tolerance and {rule}")
    return table


def _compare(
    engine_tokens: list[int], engine_logprobs: list[float], hf_tokens: list[int], hf_logprobs: torch.Tensor
) -> SequenceAgreement:
    steps = torch.arange(len(hf_tokens))
    of_engine = hf_logprobs[steps, torch.tensor(engine_tokens)].tolist()
    of_hf = hf_logprobs[steps, torch.tensor(hf_tokens)].tolist()
    return compare_sequence(engine_tokens, engine_logprobs, hf_tokens, of_engine, of_hf)


def _hf_greedy(
    model: PreTrainedModel, prompt: list[int], num_tokens: int, device: str
) -> tuple[list[int], torch.Tensor]:
    """-> greedy tokens, and (num_tokens, V) float32 log-softmax of the raw logits per step, on the CPU."""
    input_ids = torch.tensor([prompt], device=device)  # (1, P)
    with torch.inference_mode():
        result = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
            output_logits=True,  # the raw logits, before any processor
            return_dict_in_generate=True,
        )
    tokens = result.sequences[0, len(prompt) :].tolist()
    logprobs = torch.log_softmax(torch.stack(result.logits)[:, 0].float(), dim=-1)  # (num_tokens, V)
    return tokens, logprobs.cpu()
