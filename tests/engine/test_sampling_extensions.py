"""vLLM's sampling extensions against Hugging Face's logits processors on the same inputs and weights.

Row by row, the sampler's repetition penalty, logit bias, min-p and min_tokens bans equal what
RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor, MinPLogitsWarper and
MinNewTokensLengthLogitsProcessor make of the same logits; rows without a setting keep theirs bit
for bit. Then greedy generation with repetition_penalty, logit_bias and min_tokens equals `generate`
with the same settings, in one mixed batch; and the text-side options (include_stop_str_in_output,
skip_special_tokens, stop strings waiting for min_tokens) behave as vLLM's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from engine import EngineConfig, InvalidPromptError, LLMEngine, SamplingParams
from engine.model.sampler import SamplingRow, _keep_min_p, apply_logit_bias, apply_repetition_penalty, ban_tokens

VOCAB = 64
EOS = 2


def row(params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None) -> SamplingRow:
    banned = [] if len(output or []) >= params.min_tokens else sorted({EOS, *params.stop_token_ids})
    return SamplingRow(params, seed=0, num_output_tokens=len(output or []), output_token_ids=output or [],
                       prompt_token_ids=prompt or [], banned_token_ids=banned)  # fmt: skip


def test_repetition_penalty_equals_hf_row_by_row() -> None:
    logits = torch.randn(3, VOCAB) * 3
    prompts, outputs = [[5, 6, 7, 5], [1, 2], [9]], [[8, 40], [], [9, 9, 3]]
    penalties = [1.3, 1.0, 0.7]
    rows = [
        row(SamplingParams(repetition_penalty=p), prompt, output)
        for p, prompt, output in zip(penalties, prompts, outputs)
    ]
    ours = apply_repetition_penalty(logits, rows)
    for i, (penalty, prompt, output) in enumerate(zip(penalties, prompts, outputs)):
        hf = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + output]), logits[i : i + 1].clone())
        assert torch.equal(ours[i], hf[0]), i
    assert torch.equal(ours[1], logits[1])  # penalty 1: untouched


def test_logit_bias_equals_hf_sequence_bias() -> None:
    logits = torch.randn(2, VOCAB)
    bias = {3: 100.0, 17: -100.0, 40: 2.5}
    ours = apply_logit_bias(logits, [row(SamplingParams(logit_bias=bias)), row(SamplingParams())])
    hf = SequenceBiasLogitsProcessor({(token,): value for token, value in bias.items()})(
        torch.tensor([[1, 2]]), logits[:1].clone()
    )
    assert torch.allclose(ours[0], hf[0])
    assert torch.equal(ours[1], logits[1])


def test_min_p_keeps_the_tokens_hf_keeps() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB) * 2
    min_ps = [0.05, 0.3, 0.0, 0.9]
    ours = _keep_min_p(logits, [row(SamplingParams(min_p=min_p)) for min_p in min_ps])
    for i, min_p in enumerate(min_ps):
        if min_p == 0.0:
            assert torch.equal(ours[i], logits[i])
            continue
        hf = MinPLogitsWarper(min_p)(torch.tensor([[1]]), logits[i : i + 1].clone())
        assert torch.equal(torch.isinf(ours[i]), torch.isinf(hf[0])), i


def test_min_tokens_bans_eos_and_stop_tokens_as_hf_does_until_reached() -> None:
    logits = torch.randn(2, VOCAB)
    params = SamplingParams(min_tokens=3, stop_token_ids=[11])
    early, reached = row(params, output=[4, 5]), row(params, output=[4, 5, 6])
    ours = ban_tokens(logits, [early, reached])
    hf = MinNewTokensLengthLogitsProcessor(0, 3, [EOS, 11])(torch.tensor([[4, 5]]), logits[:1].clone())
    assert torch.equal(ours[0], hf[0])
    assert torch.equal(ours[1], logits[1])


def _hf_greedy(model_dir: Path, prompt: list[int], max_tokens: int, **generate_kwargs: object) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        sequences = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            **generate_kwargs,
        )
    return sequences[0, len(prompt) :].tolist()


def test_greedy_generation_with_each_extension_matches_hf_generate_in_one_mixed_batch(llama_dir: Path) -> None:
    rng = random.Random(3)
    prompts = [[rng.randrange(10, 500) for _ in range(n)] for n in (12, 9, 15, 7)]
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=128))
    plain = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    first_greedy = engine.generate([prompts[2]], plain)[0].token_ids[0]
    bias_token = 123
    params = [
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, repetition_penalty=1.5),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logit_bias={bias_token: 8.0}),
        # The greedy first token would stop it at once; min_tokens holds it off for 5 tokens.
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=[first_greedy], min_tokens=5),
        plain,
    ]
    outputs = engine.generate(prompts, params)
    unsteered = engine.generate(prompts[:2], plain)
    assert outputs[0].token_ids != unsteered[0].token_ids  # each setting changed what was chosen
    assert outputs[1].token_ids != unsteered[1].token_ids
    assert outputs[0].token_ids == _hf_greedy(llama_dir, prompts[0], 24, repetition_penalty=1.5, min_new_tokens=24)
    assert outputs[1].token_ids == _hf_greedy(
        llama_dir, prompts[1], 24, sequence_bias={(bias_token,): 8.0}, min_new_tokens=24
    )
    expected = _hf_greedy(llama_dir, prompts[2], 24, eos_token_id=[first_greedy], min_new_tokens=5)
    assert outputs[2].token_ids == expected and len(expected) >= 5 and first_greedy not in expected[:5]
    assert outputs[3].token_ids == _hf_greedy(llama_dir, prompts[3], 24, min_new_tokens=24)


def test_text_options_include_the_stop_string_keep_special_tokens_and_wait_for_min_tokens(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=128))
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    prompt = [rng_token for rng_token in range(30, 42)]
    plain = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))[0]
    stop = plain.text[4:6]
    cut = plain.text.index(stop)
    excluded, included = engine.generate(
        [prompt, prompt],
        [
            SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop]),
            SamplingParams(
                max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
            ),
        ],
    )
    assert excluded.text == plain.text[:cut] and included.text == plain.text[: cut + len(stop)]
    assert excluded.finish_reason == included.finish_reason == "stop"
    # A stop string is looked for only once min_tokens are out: here never before the end.
    waited = engine.generate(
        [prompt], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop], min_tokens=16)
    )[0]
    assert waited.finish_reason == "length" and waited.num_generated_tokens == 16
    # Special tokens: the EOS token as an output, in the text only when asked for.
    eos_prompt = prompt + [tokenizer.eos_token_id]
    forced = {tokenizer.eos_token_id: 100.0}
    skipped, kept = engine.generate(
        [eos_prompt, eos_prompt],
        [
            SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, logit_bias=forced),
            SamplingParams(
                max_tokens=2, temperature=0.0, ignore_eos=True, logit_bias=forced, skip_special_tokens=False
            ),
        ],
    )
    assert skipped.token_ids == kept.token_ids == [tokenizer.eos_token_id] * 2
    assert skipped.text == "" and kept.text == tokenizer.eos_token * 2


def test_bias_and_a_penalty_on_one_row_compose_as_hfs_chained_processors() -> None:
    logits = torch.randn(1, VOCAB) * 3
    logits[0, 5] = 2.0
    params = SamplingParams(repetition_penalty=2.0, logit_bias={5: 3.0, 9: -1.0})
    [sampling_row] = [row(params, prompt=[5, 9, 11])]
    ours = apply_repetition_penalty(apply_logit_bias(logits, [sampling_row]), [sampling_row])
    hf = SequenceBiasLogitsProcessor({(5,): 3.0, (9,): -1.0})(torch.tensor([[5, 9, 11]]), logits.clone())
    hf = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[5, 9, 11]]), hf)
    assert torch.allclose(ours, hf)
    assert ours[0, 5].item() == 2.5  # (2 + 3) / 2: the bias, then the penalty


def test_stop_token_ids_outside_the_vocabulary_are_refused_not_run(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64))
    with pytest.raises(InvalidPromptError, match="stop_token_ids"):
        engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=[10**6]))
    assert not engine.has_unfinished_requests()
    assert engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0.0))[0].num_generated_tokens
