"""Hugging Face `generate` on the same weights: the reference the engine must match."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList, PreTrainedModel


class OpenAIPenaltiesProcessor(LogitsProcessor):
    """OpenAI's presence and frequency penalties, counted over the generated part of `input_ids`:
    scores - frequency_penalty * count - presence_penalty * (count > 0)."""

    def __init__(self, prompt_length: int, frequency_penalty: float, presence_penalty: float) -> None:
        self.prompt_length = prompt_length
        self.frequency_penalty = frequency_penalty
        self.presence_penalty = presence_penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]  # (B, generated so far)
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency_penalty * counts - self.presence_penalty * (counts > 0).to(scores.dtype)


@lru_cache(maxsize=4)
def _reference_model(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


@lru_cache(maxsize=256)
def _greedy(
    model_dir: Path, prompt: tuple[int, ...], max_tokens: int, frequency_penalty: float, presence_penalty: float
) -> tuple[tuple[int, ...], torch.Tensor]:
    """-> greedy tokens (EOS ignored), and (max_tokens, V) log-softmax of the raw logits per step."""
    model = _reference_model(model_dir)
    processors = LogitsProcessorList()
    if frequency_penalty or presence_penalty:
        processors.append(OpenAIPenaltiesProcessor(len(prompt), frequency_penalty, presence_penalty))
    with torch.inference_mode():
        result = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            logits_processor=processors,
            output_logits=True,  # the raw logits, before any processor
            return_dict_in_generate=True,
        )
    token_ids = result.sequences[0, len(prompt) :].tolist()
    logprobs = torch.log_softmax(torch.stack(result.logits)[:, 0].float(), dim=-1)  # (max_tokens, V)
    return tuple(token_ids), logprobs


def hf_greedy(
    model_dir: Path,
    prompt: list[int],
    max_tokens: int,
    *,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> tuple[list[int], list[float]]:
    """Greedy tokens (EOS ignored, penalties applied) and the chosen tokens' logprobs under the raw logits."""
    token_ids, logprobs = _greedy(model_dir, tuple(prompt), max_tokens, frequency_penalty, presence_penalty)
    return list(token_ids), logprobs[torch.arange(len(token_ids)), torch.tensor(token_ids)].tolist()


def hf_top_logprobs(
    model_dir: Path,
    prompt: list[int],
    max_tokens: int,
    num_top: int,
    *,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> list[list[tuple[int, float]]]:
    """Per step of the same greedy run, the `num_top` most likely (token id, logprob) under the raw
    logits, most likely first."""
    _, logprobs = _greedy(model_dir, tuple(prompt), max_tokens, frequency_penalty, presence_penalty)
    values, token_ids = logprobs.topk(num_top, dim=-1)  # (max_tokens, num_top)
    return [list(zip(ids, vals)) for ids, vals in zip(token_ids.tolist(), values.tolist())]
