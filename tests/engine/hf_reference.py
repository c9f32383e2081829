"""Hugging Face `generate` on the same weights: the reference the engine must match."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


@lru_cache(maxsize=4)
def _reference_model(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


@lru_cache(maxsize=256)
def _greedy(model_dir: Path, prompt: tuple[int, ...], max_tokens: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    model = _reference_model(model_dir)
    with torch.inference_mode():
        result = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    token_ids = result.sequences[0, len(prompt) :].tolist()
    logprobs = [torch.log_softmax(step_logits[0].float(), -1)[token].item() for step_logits, token in zip(result.logits, token_ids)]
    return tuple(token_ids), tuple(logprobs)


def hf_greedy(model_dir: Path, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens (EOS ignored) and the chosen tokens' logprobs under the raw logits."""
    token_ids, logprobs = _greedy(model_dir, tuple(prompt), max_tokens)
    return list(token_ids), list(logprobs)
