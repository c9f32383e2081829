"""The GPU check's pure parts: roofline arithmetic, table formatting, the budget and its section loop,
greedy-agreement bookkeeping, and sizes that fit their KV pool. No model runs here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.gpu_agreement import agreement_verdict, compare_sequence, num_unexplained, same_token_fraction
from benchmarks.gpu_budget import (
    Budget,
    Section,
    SectionSkipped,
    run_section,
    run_sections,
    section_allowance_s,
    skip_reason,
)
from benchmarks.gpu_check import build_sections
from benchmarks.gpu_context import BLOCK_SIZE, GPU_SIZES, SMALL_SIZES, CheckContext, CheckSizes
from benchmarks.gpu_roofline import (
    copy_bandwidth,
    datasheet_bandwidth,
    decode_bytes_per_token,
    decode_tokens_per_s,
    roofline_tokens_per_s,
)
from benchmarks.gpu_tables import Column, SectionReport, Table, format_section, format_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----- roofline ---------------------------------------------------------------------------


def test_a_copy_counts_every_byte_read_and_written() -> None:
    assert copy_bandwidth(num_bytes=2 * 10**9, num_copies=10, seconds=0.01) == pytest.approx(4e12)


def test_half_a_gigabyte_at_four_terabytes_per_second_decodes_8000_tokens_per_second() -> None:
    read = decode_bytes_per_token(weight_bytes=499_000_000, kv_bytes_per_token=10_000, mean_context_tokens=100.0)
    assert read == pytest.approx(500_000_000)
    assert roofline_tokens_per_s(read, bandwidth=4e12) == pytest.approx(8000)


def test_decode_rate_leaves_out_the_first_token_which_the_prefill_makes() -> None:
    assert decode_tokens_per_s(num_tokens=101, first_token_s=10.0, finish_s=12.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="need >= 2 tokens"):
        decode_tokens_per_s(num_tokens=1, first_token_s=10.0, finish_s=12.0)


def test_datasheet_bandwidth_is_known_for_the_h200_only_by_name() -> None:
    assert datasheet_bandwidth("NVIDIA H200") == 4.8e12
    assert datasheet_bandwidth("x86_64") is None


def test_roofline_refuses_zero_bytes_and_bandwidth_zero_seconds() -> None:
    with pytest.raises(ValueError, match="bytes_per_token"):
        roofline_tokens_per_s(0, 1e12)
    with pytest.raises(ValueError, match="seconds"):
        copy_bandwidth(1, 1, 0.0)


# ----- tables -----------------------------------------------------------------------------


def test_table_aligns_text_left_numbers_right_and_prints_none_as_a_dash() -> None:
    table = Table("decode", [Column("system"), Column("tok/s", ",.1f"), Column("share", ".1%")], notes=["a note"])
    table.add_row("engine", 1234.56, 0.5)
    table.add_row("hf generate", 7.0, None)
    assert format_table(table).splitlines() == [
        "decode",
        "system         tok/s  share",
        "---------------------------",
        "engine       1,234.6  50.0%",
        "hf generate      7.0      -",
        "  a note",
    ]


def test_a_row_with_the_wrong_number_of_cells_is_refused() -> None:
    table = Table("t", [Column("a"), Column("b", "d")])
    with pytest.raises(ValueError, match="needs 2 cells, got 1"):
        table.add_row("only one")


def test_section_heading_shows_status_time_and_reason() -> None:
    report = SectionReport("5", "int8 and nf4", "failed", 2.25, [], "RuntimeError: no CUDA")
    assert format_section(report) == "== 5. int8 and nf4 [failed, 2.2s: RuntimeError: no CUDA]"


# ----- budget and sections ----------------------------------------------------------------


def test_allowance_keeps_what_later_sections_plan() -> None:
    assert section_allowance_s(remaining_s=300.0, planned_later_s=200.0) == 100.0


def test_a_section_starts_on_half_its_plan_and_is_skipped_below() -> None:
    assert skip_reason(allowance_s=50.0, planned_s=100.0) is None
    reason = skip_reason(allowance_s=49.0, planned_s=100.0)
    assert reason is not None and "49s left" in reason
    assert "0s left" in (skip_reason(allowance_s=-5.0, planned_s=10.0) or "")


def test_budget_counts_from_construction_on_its_clock() -> None:
    clock = FakeClock()
    budget = Budget(100.0, clock=clock)
    clock.now += 30.0
    assert budget.spent_s() == 30.0 and budget.remaining_s() == 70.0
    with pytest.raises(ValueError, match="total_s"):
        Budget(0.0)


def test_a_failing_section_keeps_its_rows_and_the_next_section_runs() -> None:
    def fails(tables: list[Table]) -> None:
        table = Table("partial", [Column("x", "d")])
        tables.append(table)
        table.add_row(1)
        raise RuntimeError("CUDA out of memory")

    ran: list[str] = []
    sections = [
        Section("1", "fails", 0.4, fails),
        Section("2", "runs", 0.4, lambda tables: ran.append("2")),
    ]
    reports = run_sections(sections, Budget(100.0, clock=FakeClock()), lambda report: None)
    assert [report.status for report in reports] == ["failed", "ok"]
    assert reports[0].reason == "RuntimeError: CUDA out of memory"
    assert reports[0].tables[0].rows == [[1]]
    assert ran == ["2"]


def test_a_section_that_overruns_its_allowance_is_stopped() -> None:
    started = time.monotonic()
    report = run_section(Section("3", "hangs", 0.1, lambda tables: time.sleep(30)), allowance_s=0.2, planned_s=0.2)
    assert report.status == "timed out"
    assert "0s limit" in report.reason
    assert time.monotonic() - started < 10


def test_a_section_may_skip_itself_with_a_reason() -> None:
    def skips(tables: list[Table]) -> None:
        raise SectionSkipped("bitsandbytes is not installed")

    report = run_section(Section("5", "quantization", 0.1, skips), allowance_s=60.0, planned_s=10.0)
    assert (report.status, report.reason) == ("skipped", "bitsandbytes is not installed")


def test_time_spent_by_one_section_skips_a_later_one_it_leaves_too_little() -> None:
    clock = FakeClock()

    def slow(tables: list[Table]) -> None:
        clock.now += 90.0

    sections = [
        Section("1", "slow", 0.2, slow),
        Section("2", "next", 0.5, lambda tables: None),
    ]
    seen: list[SectionReport] = []
    reports = run_sections(sections, Budget(100.0, clock=clock), seen.append)
    assert [report.status for report in reports] == ["ok", "skipped"]
    assert "10s left" in reports[1].reason
    assert seen == reports


# ----- agreement --------------------------------------------------------------------------


def test_identical_sequences_compare_every_logprob() -> None:
    agreement = compare_sequence([5, 6, 7], [-0.1, -0.2, -0.3], [5, 6, 7], [-0.1, -0.25, -0.3], [-0.1, -0.25, -0.3])
    assert agreement.is_identical
    assert agreement.max_logprob_diff == pytest.approx(0.05)
    assert agreement.margin == 0.0


def test_a_difference_is_compared_where_it_happens_and_not_after() -> None:
    # Position 1 differs: transformers' own token 9 leads the engine's 6 by 0.1; position 2 is ignored.
    agreement = compare_sequence([5, 6, 1], [-0.1, -0.8, -0.0], [5, 9, 2], [-0.1, -0.8, -50.0], [-0.1, -0.7, -0.1])
    assert agreement.first_difference == 1
    assert agreement.max_logprob_diff == pytest.approx(0.0)
    assert agreement.margin == pytest.approx(0.1)


def test_a_near_tie_difference_is_explained_in_bfloat16_but_fails_float32() -> None:
    near_tie = compare_sequence([5, 6], [-0.1, -0.8], [5, 9], [-0.1, -0.8], [-0.1, -0.7])
    clear_lead = compare_sequence([5, 6], [-0.1, -3.0], [5, 9], [-0.1, -3.0], [-0.1, -0.1])
    assert num_unexplained([near_tie, clear_lead], tolerance=0.25) == 1
    assert agreement_verdict([near_tie], tolerance=0.25, require_identical=False) == "agrees"
    assert agreement_verdict([near_tie], tolerance=1e-4, require_identical=True) == "DISAGREES"
    assert agreement_verdict([clear_lead], tolerance=0.25, require_identical=False) == "DISAGREES"


def test_same_token_fraction_counts_positions() -> None:
    assert same_token_fraction([[1, 2, 3], [4, 0]], [[1, 2, 0], [4, 5]]) == pytest.approx(3 / 5)


# ----- sizes and sections -----------------------------------------------------------------


@pytest.mark.parametrize("sizes", [GPU_SIZES, SMALL_SIZES], ids=["gpu", "small"])
def test_the_kv_pool_holds_a_full_batch_at_its_longest_so_no_run_preempts(sizes: CheckSizes) -> None:
    blocks_per_sequence = -(-(sizes.max_prompt + sizes.max_new) // BLOCK_SIZE)
    assert sizes.num_kv_blocks >= max(sizes.batch_size, sizes.quant_prompts) * blocks_per_sequence
    assert sizes.scheduling_batch_size < sizes.num_requests
    assert sizes.num_request_mode <= sizes.num_requests


def test_sections_are_numbered_in_order_and_plan_less_than_the_budget(tmp_path: Path) -> None:
    context = CheckContext(SMALL_SIZES, device="cpu", dtype="float32", model_root=tmp_path, threads=1)
    sections = build_sections(context)
    assert [section.number for section in sections] == [str(number) for number in range(9)]
    assert sum(section.share for section in sections) < 1.0
