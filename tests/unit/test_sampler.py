"""Sampler: greedy, temperature, top-k, top-p and seeded noise on hand-made logits (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampler import Sampler, SamplingRow
from engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def random_logits(num_rows: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, vocab_size, generator=torch.Generator().manual_seed(seed)) * 3


def rows_of(params: SamplingParams, num_rows: int, seed: int = 0, position: int = 0) -> list[SamplingRow]:
    return [(params, seed + i, position) for i in range(num_rows)]


def test_greedy_rows_take_the_argmax() -> None:
    logits = random_logits(6, 50)
    token_ids, _ = Sampler().sample(logits, rows_of(GREEDY, 6))
    assert token_ids == logits.argmax(dim=-1).tolist()


def test_greedy_rows_take_the_argmax_next_to_random_rows() -> None:
    logits = random_logits(4, 50)
    random_params = SamplingParams(temperature=1.0)
    rows: list[SamplingRow] = [(GREEDY, 1, 0), (random_params, 2, 0), (GREEDY, 3, 0), (random_params, 4, 0)]
    token_ids, _ = Sampler().sample(logits, rows)
    argmax = logits.argmax(dim=-1).tolist()
    assert [token_ids[0], token_ids[2]] == [argmax[0], argmax[2]]


@pytest.mark.parametrize(
    "params",
    [GREEDY, SamplingParams(temperature=0.5, top_k=5), SamplingParams(temperature=2.0, top_p=0.5)],
)
def test_logprobs_are_log_softmax_of_the_raw_logits_at_the_chosen_token(params: SamplingParams) -> None:
    logits = random_logits(5, 40)
    token_ids, logprobs = Sampler().sample(logits, rows_of(params, 5))
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(5), torch.tensor(token_ids)]
    assert logprobs == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=5.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=5.0, top_p=1e-6),
    ],
)
def test_top_k_one_and_tiny_top_p_equal_greedy(params: SamplingParams) -> None:
    logits = random_logits(32, 100)
    token_ids, _ = Sampler().sample(logits, rows_of(params, 32))
    assert token_ids == logits.argmax(dim=-1).tolist()


# Probabilities by token id: token 1 is the most likely, then 3, 0, 2.
FILTER_PROBS = [0.15, 0.5, 0.05, 0.3]


@pytest.mark.parametrize(
    ("top_k", "top_p", "allowed"),
    [
        (2, 1.0, {1, 3}),
        (3, 1.0, {0, 1, 3}),
        (0, 0.75, {1, 3}),  # 0.5 + 0.3 reach 0.75: token 0 is dropped
        (0, 0.9, {0, 1, 3}),
        (3, 0.6, {1, 3}),
    ],
)
def test_tokens_outside_top_k_and_top_p_are_never_drawn(top_k: int, top_p: float, allowed: set[int]) -> None:
    num_draws = 400
    logits = torch.tensor(FILTER_PROBS).log().expand(num_draws, -1)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    token_ids, _ = Sampler().sample(logits, rows_of(params, num_draws))
    assert set(token_ids) == allowed


def test_same_seed_and_position_draw_the_same_token_whatever_the_batch() -> None:
    params = SamplingParams(temperature=1.0)
    vocab_size = 1000
    target_logits = torch.zeros(vocab_size)  # flat: the token depends only on the noise
    target: SamplingRow = (params, 42, 7)
    others = random_logits(3, vocab_size, seed=1)
    other_rows: list[SamplingRow] = [(params, 1, 0), (GREEDY, 2, 5), (SamplingParams(temperature=0.3, top_k=50), 3, 7)]
    sampler = Sampler()

    (alone,), _ = sampler.sample(target_logits[None, :], [target])
    first, _ = sampler.sample(
        torch.stack([others[0], target_logits, others[1], others[2]]),
        [other_rows[0], target, other_rows[1], other_rows[2]],
    )
    last, _ = sampler.sample(
        torch.stack([others[2], others[1], others[0], target_logits]),
        [other_rows[2], other_rows[1], other_rows[0], target],
    )

    assert first[1] == last[3] == alone
    assert [first[0], first[2], first[3]] == [last[2], last[1], last[0]]


def test_different_seeds_and_positions_draw_differently_on_a_flat_distribution() -> None:
    params = SamplingParams(temperature=1.0)
    logits = torch.zeros(16, 1000)
    by_seed, _ = Sampler().sample(logits, [(params, seed, 0) for seed in range(16)])
    by_position, _ = Sampler().sample(logits, [(params, 0, position) for position in range(16)])
    assert len(set(by_seed)) >= 14
    assert len(set(by_position)) >= 14


def test_noise_follows_the_token_so_raising_the_drawn_tokens_logit_keeps_the_draw() -> None:
    params = SamplingParams(temperature=1.0)
    num_rows = 64
    logits = random_logits(num_rows, 20, seed=3) / 3
    rows = rows_of(params, num_rows)
    token_ids, _ = Sampler().sample(logits, rows)

    raised = logits.clone()
    raised[torch.arange(num_rows), torch.tensor(token_ids)] += 1.5
    raised_token_ids, _ = Sampler().sample(raised, rows)

    assert raised_token_ids == token_ids


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_follows_softmax_of_scaled_logits(temperature: float) -> None:
    num_draws = 2000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    params = SamplingParams(temperature=temperature)
    rows: list[SamplingRow] = [(params, 123, position) for position in range(num_draws)]

    token_ids, _ = Sampler().sample(logits.expand(num_draws, -1), rows)

    frequencies = torch.bincount(torch.tensor(token_ids), minlength=4).float() / num_draws
    expected = torch.softmax(logits / temperature, dim=-1)
    tolerance = 4 * math.sqrt(0.25 / num_draws)  # four standard deviations at p = 0.5
    assert frequencies.tolist() == pytest.approx(expected.tolist(), abs=tolerance)
