"""Sampler: penalties, greedy, temperature, top-k, top-p, seeded noise and top logprobs on hand-made
logits (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.model.sampler import Sampler, SamplingRow, apply_penalties, output_token_counts
from engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def random_logits(num_rows: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, vocab_size, generator=torch.Generator().manual_seed(seed)) * 3


def rows_of(params: SamplingParams, num_rows: int, seed: int = 0, position: int = 0) -> list[SamplingRow]:
    return [SamplingRow(params, seed + i, position) for i in range(num_rows)]


def test_greedy_rows_take_the_argmax() -> None:
    logits = random_logits(6, 50)
    token_ids = Sampler().sample(logits, rows_of(GREEDY, 6)).token_ids
    assert token_ids == logits.argmax(dim=-1).tolist()


def test_greedy_rows_take_the_argmax_next_to_random_rows() -> None:
    logits = random_logits(4, 50)
    random_params = SamplingParams(temperature=1.0)
    row_params = [GREEDY, random_params, GREEDY, random_params]
    rows = [SamplingRow(params, seed, 0) for seed, params in enumerate(row_params, start=1)]
    token_ids = Sampler().sample(logits, rows).token_ids
    argmax = logits.argmax(dim=-1).tolist()
    assert [token_ids[0], token_ids[2]] == [argmax[0], argmax[2]]


@pytest.mark.parametrize(
    "params",
    [GREEDY, SamplingParams(temperature=0.5, top_k=5), SamplingParams(temperature=2.0, top_p=0.5)],
)
def test_logprobs_are_log_softmax_of_the_raw_logits_at_the_chosen_token(params: SamplingParams) -> None:
    logits = random_logits(5, 40)
    sampled = Sampler().sample(logits, rows_of(params, 5))
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(5), torch.tensor(sampled.token_ids)]
    assert sampled.logprobs == pytest.approx(expected.tolist(), abs=1e-5)


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
    token_ids = Sampler().sample(logits, rows_of(params, 32)).token_ids
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
    token_ids = Sampler().sample(logits, rows_of(params, num_draws)).token_ids
    assert set(token_ids) == allowed


def test_same_seed_and_position_draw_the_same_token_whatever_the_batch() -> None:
    params = SamplingParams(temperature=1.0)
    vocab_size = 1000
    target_logits = torch.zeros(vocab_size)  # flat: the token depends only on the noise
    target = SamplingRow(params, 42, 7)
    others = random_logits(3, vocab_size, seed=1)
    other_rows = [
        SamplingRow(params, 1, 0),
        SamplingRow(GREEDY, 2, 5),
        SamplingRow(SamplingParams(temperature=0.3, top_k=50), 3, 7),
    ]
    sampler = Sampler()

    (alone,) = sampler.sample(target_logits[None, :], [target]).token_ids
    first = sampler.sample(
        torch.stack([others[0], target_logits, others[1], others[2]]),
        [other_rows[0], target, other_rows[1], other_rows[2]],
    ).token_ids
    last = sampler.sample(
        torch.stack([others[2], others[1], others[0], target_logits]),
        [other_rows[2], other_rows[1], other_rows[0], target],
    ).token_ids

    assert first[1] == last[3] == alone
    assert [first[0], first[2], first[3]] == [last[2], last[1], last[0]]


def test_different_seeds_and_positions_draw_differently_on_a_flat_distribution() -> None:
    params = SamplingParams(temperature=1.0)
    logits = torch.zeros(16, 1000)
    by_seed = Sampler().sample(logits, [SamplingRow(params, seed, 0) for seed in range(16)]).token_ids
    by_position = Sampler().sample(logits, [SamplingRow(params, 0, position) for position in range(16)]).token_ids
    assert len(set(by_seed)) >= 14
    assert len(set(by_position)) >= 14


def test_noise_follows_the_token_so_raising_the_drawn_tokens_logit_keeps_the_draw() -> None:
    params = SamplingParams(temperature=1.0)
    num_rows = 64
    logits = random_logits(num_rows, 20, seed=3) / 3
    rows = rows_of(params, num_rows)
    token_ids = Sampler().sample(logits, rows).token_ids

    raised = logits.clone()
    raised[torch.arange(num_rows), torch.tensor(token_ids)] += 1.5
    raised_token_ids = Sampler().sample(raised, rows).token_ids

    assert raised_token_ids == token_ids


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_follows_softmax_of_scaled_logits(temperature: float) -> None:
    num_draws = 2000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    params = SamplingParams(temperature=temperature)
    rows = [SamplingRow(params, 123, position) for position in range(num_draws)]

    token_ids = Sampler().sample(logits.expand(num_draws, -1), rows).token_ids

    frequencies = torch.bincount(torch.tensor(token_ids), minlength=4).float() / num_draws
    expected = torch.softmax(logits / temperature, dim=-1)
    tolerance = 4 * math.sqrt(0.25 / num_draws)  # four standard deviations at p = 0.5
    assert frequencies.tolist() == pytest.approx(expected.tolist(), abs=tolerance)


# ----- presence and frequency penalties -------------------------------------------------------


def test_output_token_counts_count_each_list_into_its_own_row() -> None:
    counts = output_token_counts([[1, 1, 3], [], [0, 4, 4, 4]], vocab_size=5, device=torch.device("cpu"))
    assert counts.tolist() == [[0, 2, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 3]]


def test_penalties_subtract_frequency_times_count_plus_presence_once() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25)
    negative = SamplingParams(temperature=0.0, frequency_penalty=-1.0, presence_penalty=-2.0)
    rows = [SamplingRow(params, 0, 3, [1, 1, 3]), SamplingRow(negative, 0, 2, [4, 0])]

    penalized = apply_penalties(logits, rows)

    # token 1: twice -> 2 - (0.5 * 2 + 0.25); token 3: once -> 4 - (0.5 + 0.25)
    assert penalized[0].tolist() == [1.0, 0.75, 3.0, 3.25, 5.0]
    # negative penalties raise the generated tokens: 0.5 - (-1 * 1 - 2) = 3.5
    assert penalized[1].tolist() == [3.5, 0.5, 0.5, 0.5, 3.5]
    assert logits[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # the input is left alone


def test_rows_without_penalties_keep_their_logits_bit_for_bit() -> None:
    logits = random_logits(4, 50)
    penalized_params = SamplingParams(frequency_penalty=2.0, presence_penalty=2.0)
    rows = [
        SamplingRow(GREEDY, 0, 3, []),
        SamplingRow(penalized_params, 1, 3, [5, 5, 9]),
        SamplingRow(SamplingParams(temperature=0.7), 2, 3, []),
        SamplingRow(penalized_params, 3, 0, []),  # nothing generated yet: nothing to penalize
    ]
    penalized = apply_penalties(logits, rows)
    assert torch.equal(penalized[[0, 2, 3]], logits[[0, 2, 3]])
    assert not torch.equal(penalized[1], logits[1])
    assert apply_penalties(logits, [rows[0], rows[2]]) is logits


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, presence_penalty=1.0),
        SamplingParams(temperature=0.0, frequency_penalty=0.5),  # 0.5 x 2 occurrences
        SamplingParams(temperature=1.0, top_k=1, presence_penalty=1.0),
        SamplingParams(temperature=3.0, top_p=1e-6, frequency_penalty=0.5),
    ],
)
def test_penalties_steer_greedy_and_random_rows_but_not_the_reported_logprobs(params: SamplingParams) -> None:
    # Token 2 leads token 0 by 0.5, and was generated twice: a penalty of 1.0 hands the lead to 0.
    logits = torch.tensor([[1.5, 0.0, 2.0, -1.0]])
    sampled = Sampler().sample(logits, [SamplingRow(params, 7, 2, [2, 2])])
    assert sampled.token_ids == [0]
    assert sampled.logprobs == pytest.approx([torch.log_softmax(logits[0], -1)[0].item()], abs=1e-6)


def test_penalized_and_plain_rows_share_a_batch() -> None:
    logits = torch.tensor([[1.5, 0.0, 2.0, -1.0]]).expand(3, -1)
    penalized = SamplingParams(temperature=0.0, presence_penalty=1.0)
    rows = [SamplingRow(GREEDY, 0, 2, []), SamplingRow(penalized, 1, 2, [2, 2]), SamplingRow(GREEDY, 2, 2, [])]
    assert Sampler().sample(logits, rows).token_ids == [2, 0, 2]


# ----- top logprobs ---------------------------------------------------------------------------


def test_top_logprobs_are_the_most_likely_tokens_of_the_raw_distribution_per_row() -> None:
    logits = random_logits(4, 50, seed=5)
    wanted = [3, 0, 20, 1]
    rows = [
        SamplingRow(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3), 0, 0, []),
        SamplingRow(SamplingParams(temperature=0.0, logprobs=True), 1, 0, []),
        # Penalties and temperature steer the choice, never the reported distribution.
        SamplingRow(
            SamplingParams(temperature=0.5, presence_penalty=2.0, logprobs=True, top_logprobs=20), 2, 2, [7, 8]
        ),
        SamplingRow(SamplingParams(temperature=1.0, top_k=3, logprobs=True, top_logprobs=1), 3, 0, []),
    ]

    sampled = Sampler().sample(logits, rows)

    expected_logprobs = torch.log_softmax(logits, dim=-1)
    for row, num_wanted in enumerate(wanted):
        top = sampled.top_logprobs[row]
        assert len(top) == num_wanted
        if num_wanted == 0:
            continue
        expected_values, expected_ids = expected_logprobs[row].topk(num_wanted)
        assert [token_id for token_id, _ in top] == expected_ids.tolist()
        assert [logprob for _, logprob in top] == pytest.approx(expected_values.tolist(), abs=1e-6)
    # A greedy row's chosen token is its top alternative.
    assert sampled.top_logprobs[0][0] == (sampled.token_ids[0], pytest.approx(sampled.logprobs[0]))


def test_no_row_asking_for_top_logprobs_gives_an_empty_list_per_row() -> None:
    sampled = Sampler().sample(random_logits(3, 20), rows_of(GREEDY, 3))
    assert sampled.top_logprobs == [[], [], []]


def test_top_logprobs_beyond_the_vocabulary_return_the_whole_vocabulary() -> None:
    params = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=20)
    sampled = Sampler().sample(torch.tensor([[0.0, 2.0, 1.0]]), [SamplingRow(params, 0, 0)])
    assert [token_id for token_id, _ in sampled.top_logprobs[0]] == [1, 2, 0]


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-6])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature: float) -> None:
    # Logits divided by it overflow to inf: drawing from NaN probabilities gave an index past the
    # vocabulary, and the engine step failed for every request in the batch.
    logits = random_logits(3, 64)
    sampled = Sampler().sample(logits, rows_of(SamplingParams(temperature=temperature), 3))
    assert sampled.token_ids == logits.argmax(dim=-1).tolist()


def test_a_row_with_every_token_removed_takes_its_most_likely_token_instead_of_one_past_the_vocabulary() -> None:
    logits = torch.full((2, 16), float("-inf"))
    drawn = Sampler()._sample_random(logits, rows_of(SamplingParams(temperature=1.0), 2))
    assert drawn.tolist() == [0, 0]
