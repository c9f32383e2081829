"""How decodes are grouped for attention: by similar context length, each exactly once."""

from __future__ import annotations

import pytest

from engine.model.paged_attention import split_by_context


def test_every_decode_lands_in_exactly_one_group() -> None:
    ids = list(range(10, 42))
    lens = [(i * 37) % 600 + 16 for i in range(32)]
    groups = split_by_context(ids, lens)
    assert sorted(i for group in groups for i in group) == ids


def test_groups_are_runs_of_sorted_context_lengths() -> None:
    ids = list(range(32))
    lens = [(i * 37) % 600 + 16 for i in range(32)]
    by_id = dict(zip(ids, lens))
    groups = split_by_context(ids, lens)
    bounds = [(min(by_id[i] for i in g), max(by_id[i] for i in g)) for g in groups]
    assert all(prev_max <= next_min for (_, prev_max), (next_min, _) in zip(bounds, bounds[1:]))


@pytest.mark.parametrize(
    ("lens", "num_groups"),
    [
        ([100] * 16, 1),  # equal contexts: nothing to save by splitting
        ([20] * 16 + [2000] * 16, 2),  # two clusters far apart: padding 16 x 1980 outweighs a call
        ([30, 31, 29, 32], 1),  # small and similar: one call is cheaper than any split
    ],
)
def test_split_pays_off_only_when_padding_outweighs_a_call(lens: list[int], num_groups: int) -> None:
    assert len(split_by_context(list(range(len(lens))), lens)) == num_groups


def test_no_decodes_no_groups() -> None:
    assert split_by_context([], []) == []
