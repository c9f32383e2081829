"""BlockManager: block tables, ref counts, chained prefix hashes and LRU reuse of cached blocks."""

from __future__ import annotations

import pytest

from engine.core.block_manager import BlockManager, hash_block_tokens
from engine.core.sequence import Sequence
from engine.sampling_params import SamplingParams

BLOCK_SIZE = 4


def make_seq(request_id: str, token_ids: list[int]) -> Sequence:
    return Sequence(request_id=request_id, prompt_token_ids=list(token_ids), params=SamplingParams(), seed=0)


def make_manager(num_blocks: int = 8, enable_prefix_caching: bool = True) -> BlockManager:
    return BlockManager(num_blocks=num_blocks, block_size=BLOCK_SIZE, enable_prefix_caching=enable_prefix_caching)


def compute(manager: BlockManager, seq: Sequence, num_tokens: int) -> None:
    """What one step does for `seq`: grow its table (keying the blocks it fills), compute the tokens."""
    manager.append(seq, num_tokens)
    seq.num_computed_tokens += num_tokens


def run_prompt(manager: BlockManager, seq: Sequence) -> list[int]:
    """Admits `seq` with its cached prefix and computes the rest; returns the cached block ids."""
    cached = manager.match_prefix(seq)
    manager.admit(seq, cached)
    compute(manager, seq, seq.num_tokens - seq.num_computed_tokens)
    return cached


@pytest.mark.parametrize(
    ("num_tokens", "expected_blocks"),
    [(1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3), (16, 4)],
)
def test_allocation_takes_ceil_tokens_over_block_size(num_tokens: int, expected_blocks: int) -> None:
    manager = make_manager()
    seq = make_seq("a", list(range(num_tokens)))
    manager.append(seq, num_tokens)
    assert len(seq.block_ids) == expected_blocks
    assert len(set(seq.block_ids)) == expected_blocks
    assert manager.num_used_blocks == expected_blocks
    assert manager.num_free_blocks == manager.num_blocks - expected_blocks


@pytest.mark.parametrize(
    ("chunks", "expected_table_lengths"),
    [
        ([3, 1, 1], [1, 1, 2]),
        ([4, 4, 1], [1, 2, 3]),
        ([1, 1, 1, 1, 1], [1, 1, 1, 1, 2]),
        ([6, 6], [2, 3]),
    ],
)
def test_block_table_grows_only_when_a_block_fills(chunks: list[int], expected_table_lengths: list[int]) -> None:
    manager = make_manager()
    seq = make_seq("a", list(range(sum(chunks))))
    table_lengths = []
    for chunk in chunks:
        compute(manager, seq, chunk)
        table_lengths.append(len(seq.block_ids))
    assert table_lengths == expected_table_lengths


@pytest.mark.parametrize("enable_prefix_caching", [True, False])
def test_free_returns_every_block(enable_prefix_caching: bool) -> None:
    manager = make_manager(num_blocks=8, enable_prefix_caching=enable_prefix_caching)
    seqs = [make_seq("a", list(range(9))), make_seq("b", list(range(100, 106))), make_seq("c", [7])]
    for seq in seqs:
        run_prompt(manager, seq)
    assert manager.num_used_blocks == 3 + 2 + 1
    for seq in seqs:
        manager.free(seq)
        assert seq.block_ids == []
        assert seq.num_computed_tokens == 0
    assert manager.num_free_blocks == manager.num_blocks
    assert manager.num_used_blocks == 0


def test_sequences_sharing_a_cached_prefix_share_blocks_until_both_are_freed() -> None:
    manager = make_manager(num_blocks=8)
    first = make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    second = make_seq("b", [1, 2, 3, 4, 5, 6, 7, 8, 10, 11])
    run_prompt(manager, first)

    cached = run_prompt(manager, second)

    assert cached == first.block_ids[:2]
    assert second.block_ids[:2] == first.block_ids[:2]
    assert second.block_ids[2] != first.block_ids[2]
    assert manager.num_used_blocks == 4  # 3 of `first` + the private tail of `second`
    manager.free(first)
    assert manager.num_used_blocks == 3  # the shared prefix is still held by `second`
    assert manager.match_prefix(make_seq("c", [1, 2, 3, 4, 5, 6, 7, 8, 0])) == second.block_ids[:2]
    manager.free(second)
    assert manager.num_used_blocks == 0


CACHED_TOKENS = list(range(1, 13))  # 3 full blocks


@pytest.mark.parametrize(
    ("query", "expected_num_blocks"),
    [
        (CACHED_TOKENS, 2),  # whole sequence cached: the last block is left to compute
        (CACHED_TOKENS[:8], 1),  # exactly 2 full blocks: only 1 matches
        (CACHED_TOKENS[:9], 2),
        (CACHED_TOKENS + [99], 3),
        (CACHED_TOKENS[:8] + [99], 2),
        (CACHED_TOKENS[:7] + [99, 99], 1),  # second block differs in its last token
        (CACHED_TOKENS[:5] + [99], 1),
        ([99] + CACHED_TOKENS[1:], 0),
        (CACHED_TOKENS[:4], 0),
    ],
)
def test_match_prefix_finds_longest_chain_of_full_blocks_and_never_the_whole_sequence(
    query: list[int], expected_num_blocks: int
) -> None:
    manager = make_manager()
    cached_seq = make_seq("cached", CACHED_TOKENS + [50])
    run_prompt(manager, cached_seq)
    assert manager.match_prefix(make_seq("q", query)) == cached_seq.block_ids[:expected_num_blocks]


def test_match_prefix_is_empty_without_prefix_caching() -> None:
    manager = make_manager(enable_prefix_caching=False)
    run_prompt(manager, make_seq("cached", CACHED_TOKENS + [50]))
    assert manager.match_prefix(make_seq("q", CACHED_TOKENS + [99])) == []


def test_hashes_are_chained_on_the_prefix() -> None:
    manager = make_manager()
    run_prompt(manager, make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # The same second block after a different first block is a different prefix.
    assert manager.match_prefix(make_seq("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])) == []
    first_block_key = hash_block_tokens(None, [1, 2, 3, 4])
    assert hash_block_tokens(None, [5, 6, 7, 8]) != hash_block_tokens(first_block_key, [5, 6, 7, 8])


@pytest.mark.parametrize(
    ("parent", "token_ids", "expected_hex"),
    [
        (None, [1, 2, 3, 4], "087a24230771ee662be37e5493b333d7"),
        (bytes.fromhex("087a24230771ee662be37e5493b333d7"), [5, 6, 7, 8], "8222aab65152a8711ac413a3333a672c"),
    ],
)
def test_hash_block_tokens_is_stable_across_processes(
    parent: bytes | None, token_ids: list[int], expected_hex: str
) -> None:
    assert hash_block_tokens(parent, token_ids).hex() == expected_hex


def test_freed_cached_blocks_are_reused_least_recently_freed_first() -> None:
    manager = make_manager(num_blocks=4)
    seqs = {name: make_seq(name, [index * 10 + t for t in range(BLOCK_SIZE)]) for index, name in enumerate("abcd")}
    for seq in seqs.values():
        run_prompt(manager, seq)
    block_of = {name: seq.block_ids[0] for name, seq in seqs.items()}
    free_order = ["b", "d", "a", "c"]
    for name in free_order:
        manager.free(seqs[name])

    fresh = make_seq("fresh", [1000 + t for t in range(2 * BLOCK_SIZE)])
    manager.append(fresh, fresh.num_tokens)

    assert fresh.block_ids == [block_of["b"], block_of["d"]]
    # Overwritten blocks lose their old prefix; the others still match theirs.
    for name in free_order:
        query = make_seq("q", seqs[name].prompt_token_ids + [7])
        expected = [] if name in ("b", "d") else [block_of[name]]
        assert manager.match_prefix(query) == expected


def test_a_revived_cached_block_becomes_most_recently_freed() -> None:
    manager = make_manager(num_blocks=3)
    first, second = make_seq("a", [1, 2, 3, 4]), make_seq("b", [5, 6, 7, 8])
    run_prompt(manager, first)
    run_prompt(manager, second)
    block_a, block_b = first.block_ids[0], second.block_ids[0]
    manager.free(first)
    manager.free(second)
    again = make_seq("a2", [1, 2, 3, 4, 9])
    assert run_prompt(manager, again) == [block_a]
    manager.free(again)

    fresh = make_seq("fresh", [100, 101, 102, 103])
    manager.append(fresh, fresh.num_tokens)

    assert fresh.block_ids == [block_b]
    assert manager.match_prefix(make_seq("q", [1, 2, 3, 4, 9])) == [block_a]


@pytest.mark.parametrize(("num_blocks_reused", "expected_match"), [(1, 2), (2, 1), (3, 0)])
def test_tail_blocks_are_freed_before_the_prefix(num_blocks_reused: int, expected_match: int) -> None:
    manager = make_manager(num_blocks=3)
    tokens = list(range(1, 13))
    seq = make_seq("a", tokens)
    run_prompt(manager, seq)  # 3 full keyed blocks
    prefix_blocks = list(seq.block_ids)
    manager.free(seq)

    fresh = make_seq("fresh", [100 + t for t in range(num_blocks_reused * BLOCK_SIZE)])
    manager.append(fresh, fresh.num_tokens)

    assert fresh.block_ids == prefix_blocks[::-1][:num_blocks_reused]
    assert manager.match_prefix(make_seq("q", tokens + [0])) == prefix_blocks[:expected_match]


def test_num_tokens_stored_counts_shared_blocks_once() -> None:
    manager = make_manager(num_blocks=8)
    first = make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    second = make_seq("b", [1, 2, 3, 4, 5, 6, 7, 8, 10, 11])
    run_prompt(manager, first)
    assert manager.num_tokens_stored([first]) == 9
    run_prompt(manager, second)
    assert manager.num_tokens_stored([first, second]) == 8 + 1 + 2
    assert manager.num_tokens_stored([second]) == 10


def test_num_tokens_stored_counts_only_computed_tokens() -> None:
    manager = make_manager()
    seq = make_seq("a", list(range(10)))
    manager.append(seq, 10)
    assert manager.num_tokens_stored([seq]) == 0
    seq.num_computed_tokens = 6
    assert manager.num_tokens_stored([seq]) == 6


@pytest.mark.parametrize(
    ("holder_is_freed", "num_tokens", "expected"),
    [
        # The holder runs: the 2 cached blocks are in use, 1 block is free.
        (False, 12, True),
        (False, 13, False),
        # The holder finished: its 2 cached blocks sit in the free list (4 free in all).
        (True, 12, True),
        (True, 16, True),
        (True, 17, False),  # 3 new + 2 cached taken back from the free list > 4
    ],
)
def test_can_admit_counts_cached_blocks_taken_back_from_the_free_list(
    holder_is_freed: bool, num_tokens: int, expected: bool
) -> None:
    manager = make_manager(num_blocks=4)
    prefix = [1, 2, 3, 4, 5, 6, 7, 8]
    holder = make_seq("holder", prefix + [9])
    run_prompt(manager, holder)
    if holder_is_freed:
        manager.free(holder)
    seq = make_seq("new", prefix + [100 + t for t in range(num_tokens - len(prefix))])
    cached = manager.match_prefix(seq)
    assert len(cached) == 2

    assert manager.can_admit(cached, num_tokens) is expected
    if expected:
        manager.admit(seq, cached)
        manager.append(seq, num_tokens - seq.num_computed_tokens)
        assert len(seq.block_ids) == manager.blocks_needed(num_tokens)


def test_blocks_are_shareable_as_soon_as_they_are_scheduled() -> None:
    """A request admitted in the same step as the one computing a prefix already shares it."""
    manager = make_manager(num_blocks=8)
    first = make_seq("first", list(range(10)))
    manager.admit(first, manager.match_prefix(first))
    manager.append(first, 10)  # scheduled, not yet computed
    second = make_seq("second", list(range(8)) + [99, 98])
    cached = manager.match_prefix(second)
    assert cached == first.block_ids[:2]
    manager.admit(second, cached)
    assert second.num_computed_tokens == 8
