"""The benchmark model, its ordinary vocabulary, and the W1/W2/W3 and warm-up workloads built from it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from engine.demo.tiny_models import BENCHMARK_LLAMA, write_tiny_model

__all__ = [
    "Request",
    "Workload",
    "WORKLOAD_BUILDERS",
    "prepare_model",
    "ordinary_token_ids",
    "random_tokens",
    "build_w1",
    "build_w2",
    "build_mixed_lengths",
    "build_w3",
    "build_warmup",
    "check_lengths",
]


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    requests: list[Request]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(request.prompt) for request in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(request.max_tokens for request in self.requests)


def prepare_model(model_dir: Path) -> Path:
    """Writes the benchmark model into `model_dir` unless it is already there."""
    return write_tiny_model(model_dir, BENCHMARK_LLAMA)


def ordinary_token_ids(model_dir: Path) -> list[int]:
    """Every token id of the vocabulary except the special ones (BOS, EOS, padding, chat markers)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special = set(tokenizer.all_special_ids)
    return [token_id for token_id in range(len(tokenizer)) if token_id not in special]


def random_tokens(rng: random.Random, vocabulary: list[int], count: int) -> list[int]:
    return rng.choices(vocabulary, k=count)


def build_w1(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, max_prompt, new_tokens = (8, 64, 16) if quick else (32, 128, 64)
    rng = random.Random(1)
    requests = [
        Request(random_tokens(rng, vocabulary, rng.randint(16, max_prompt)), new_tokens) for _ in range(num_requests)
    ]
    description = f"{num_requests} prompts of 16-{max_prompt} tokens, {new_tokens} new tokens each"
    return Workload("W1", description, requests)


def build_w2(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, max_prompt, max_new = (12, 128, 64) if quick else (48, 256, 256)
    return build_mixed_lengths(vocabulary, num_requests, max_prompt, max_new)


def build_mixed_lengths(vocabulary: list[int], num_requests: int, max_prompt: int, max_new: int) -> Workload:
    """W2 at any size: prompts of 16-`max_prompt` tokens, 8-`max_new` new tokens each; the first
    requests of a larger one are those of a smaller one."""
    rng = random.Random(2)
    requests = [
        Request(random_tokens(rng, vocabulary, rng.randint(16, max_prompt)), rng.randint(8, max_new))
        for _ in range(num_requests)
    ]
    description = f"{num_requests} prompts of 16-{max_prompt} tokens, 8-{max_new} new tokens each"
    return Workload("W2", description, requests)


def build_w3(vocabulary: list[int], quick: bool) -> Workload:
    num_requests, prefix_len, unique_len, new_tokens = (4, 128, 16, 8) if quick else (16, 512, 32, 32)
    rng = random.Random(3)
    prefix = random_tokens(rng, vocabulary, prefix_len)
    requests = [
        Request(prefix + random_tokens(rng, vocabulary, unique_len), new_tokens) for _ in range(num_requests)
    ]
    description = (
        f"{num_requests} prompts: a shared {prefix_len}-token prefix + {unique_len} unique tokens,"
        f" {new_tokens} new tokens each"
    )
    return Workload("W3", description, requests)


def build_warmup(vocabulary: list[int]) -> list[Request]:
    """A small workload run untimed on every fresh system, with prompts no benchmark workload shares."""
    rng = random.Random(0)
    return [Request(random_tokens(rng, vocabulary, 24), 4) for _ in range(4)]


WORKLOAD_BUILDERS: dict[str, Callable[[list[int], bool], Workload]] = {
    "W1": build_w1,
    "W2": build_w2,
    "W3": build_w3,
}


def check_lengths(requests: list[Request], generated: list[list[int]], system: str) -> None:
    """Fails unless every request generated exactly its `max_tokens`, as every system must."""
    for index, (request, token_ids) in enumerate(zip(requests, generated, strict=True)):
        if len(token_ids) != request.max_tokens:
            raise RuntimeError(
                f"{system}: request {index} generated {len(token_ids)} tokens, expected {request.max_tokens}"
            )
