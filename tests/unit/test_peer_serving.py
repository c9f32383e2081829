"""Peer benchmark: the requests each level sends, the medians, ratios, table, target and token check, and the CLI.

No servers: the report parts get hand-made reports and records.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from benchmarks.load_generator import build_requests
from benchmarks.peer_report import (
    PEER,
    SWITCHYARD,
    LevelRun,
    LevelSummary,
    PeerWorkload,
    Server,
    format_table,
    ratio,
    summarize,
    summarize_runs,
    target_line,
    token_agreement,
)
from benchmarks.serving_metrics import LatencyStats, LoadReport, RequestRecord

OURS = Server(SWITCHYARD, "http://127.0.0.1:8001", "demo")
THEIRS = Server(PEER, "http://127.0.0.1:8002", "/models/demo-llama")


def stats(median_ms: float | None, p99_ms: float | None = None) -> LatencyStats:
    return LatencyStats(count=1, mean_ms=median_ms, median_ms=median_ms, p99_ms=p99_ms)


def report(tok_s: float, ttft_ms: float | None = 100.0, itl_ms: float | None = 10.0) -> LoadReport:
    """A one-second run with the given output throughput and latency medians (p99s twice the medians)."""
    double = None if ttft_ms is None else 2 * ttft_ms
    return LoadReport(
        num_completed=1,
        num_failed=0,
        duration_s=1.0,
        total_input_tokens=0,
        total_output_tokens=round(tok_s),
        request_throughput=1.0,
        output_throughput=tok_s,
        total_token_throughput=tok_s,
        ttft=stats(ttft_ms, double),
        tpot=stats(itl_ms),
        itl=stats(itl_ms, None if itl_ms is None else 2 * itl_ms),
        e2e=stats(None),
        num_without_usage=0,
        error_counts={},
    )


def summary(tok_s: float, ttft_ms: float | None) -> LevelSummary:
    return summarize([report(tok_s, ttft_ms)])


def test_each_level_sends_text_prompts_without_ignore_eos_at_its_concurrency() -> None:
    config = PeerWorkload(input_words=100, max_tokens=64).load_config(THEIRS, concurrency=16, round_index=1)
    assert (config.url, config.model, config.concurrency, config.num_prompts) == (THEIRS.url, THEIRS.model, 16, 64)
    requests = build_requests(config)
    assert len(requests) == 64
    for planned in requests:
        assert planned.path == "/v1/completions"
        body = dict(planned.body)
        prompt = body.pop("prompt")
        assert isinstance(prompt, str) and len(prompt.split()) == 100
        assert body == {
            "model": "/models/demo-llama",
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def prompts(server: Server, concurrency: int, round_index: int) -> list[object]:
    config = PeerWorkload(num_prompts=4).load_config(server, concurrency, round_index)
    return [planned.body["prompt"] for planned in build_requests(config)]


def test_both_servers_get_the_same_prompts_and_every_round_and_level_new_ones() -> None:
    assert prompts(OURS, 4, 1) == prompts(THEIRS, 4, 1)
    seen = [prompts(OURS, concurrency, round_index) for concurrency in (1, 4, 16) for round_index in (0, 1, 2)]
    assert len({prompt for level in seen for prompt in level}) == 4 * len(seen)


def test_requests_per_level_scale_with_concurrency_unless_fixed() -> None:
    assert [PeerWorkload().num_prompts_at(concurrency) for concurrency in (1, 4, 16, 64)] == [8, 16, 64, 256]
    assert [PeerWorkload(prompts_per_slot=2).num_prompts_at(concurrency) for concurrency in (1, 16)] == [4, 32]
    assert PeerWorkload(num_prompts=5).num_prompts_at(64) == 5


def test_workload_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        PeerWorkload(max_tokens=0)
    with pytest.raises(ValueError, match="num_prompts"):
        PeerWorkload(num_prompts=0)


def test_summary_takes_each_metrics_median_over_the_rounds() -> None:
    result = summarize([report(100.0, 50.0), report(300.0, None), report(200.0, 70.0)])
    assert result.output_tok_s == 200.0
    assert (result.ttft_p50_ms, result.ttft_p99_ms) == (60.0, 120.0)  # the round without samples is left out
    assert (result.itl_p50_ms, result.itl_p99_ms, result.tpot_p50_ms) == (10.0, 20.0, 10.0)


def test_runs_are_summarized_per_system_and_concurrency() -> None:
    runs = [
        LevelRun(SWITCHYARD, 1, 1, report(10.0), []),
        LevelRun(SWITCHYARD, 1, 2, report(30.0), []),
        LevelRun(PEER, 1, 1, report(5.0), []),
        LevelRun(PEER, 16, 1, report(50.0), []),
    ]
    summaries = summarize_runs(runs)
    assert {system: {c: s.output_tok_s for c, s in levels.items()} for system, levels in summaries.items()} == {
        SWITCHYARD: {1: 20.0},
        PEER: {1: 5.0, 16: 50.0},
    }


def test_ratio_is_none_when_a_side_is_missing_or_not_positive() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def test_table_has_a_row_per_system_and_the_ratios_per_concurrency_measured_on_both() -> None:
    summaries = {
        SWITCHYARD: {1: summary(300.0, 50.0), 16: summary(900.0, None)},
        PEER: {1: summary(100.0, 100.0), 16: summary(450.0, 80.0), 64: summary(500.0, 90.0)},
    }
    header, *rows = format_table(summaries).splitlines()
    assert " ".join(header.split()) == "conc system out tok/s TTFT p50 TTFT p99 ITL p50 ITL p99 TPOT p50"
    assert [row.split() for row in rows] == [
        ["1", SWITCHYARD, "300.0", "50.0", "100.0", "10.0", "20.0", "10.0"],
        ["1", PEER, "100.0", "100.0", "200.0", "10.0", "20.0", "10.0"],
        ["switchyard", "/", "peer", "3.00x", "0.50x"],
        ["16", SWITCHYARD, "900.0", "-", "-", "10.0", "20.0", "10.0"],
        ["16", PEER, "450.0", "80.0", "160.0", "10.0", "20.0", "10.0"],
        ["switchyard", "/", "peer", "2.00x", "-"],
    ]

    def right_edge(line: str, text: str) -> int:
        return line.index(text) + len(text)

    # Values and ratios end under their column names.
    assert right_edge(header, "out tok/s") == right_edge(rows[0], "300.0") == right_edge(rows[2], "3.00x")
    assert right_edge(header, "TTFT p50") == right_edge(rows[0], "50.0") == right_edge(rows[2], "0.50x")


@pytest.mark.parametrize(
    ("ours", "theirs", "verdict"),
    [
        (summary(150.0, 80.0), summary(100.0, 80.0), "1.50x tok/s, 1.00x TTFT p50 -> met"),
        (summary(149.0, 40.0), summary(100.0, 80.0), "1.49x tok/s, 0.50x TTFT p50 -> NOT met"),
        (summary(300.0, 81.0), summary(100.0, 80.0), "3.00x tok/s, 1.01x TTFT p50 -> NOT met"),
        (summary(300.0, None), summary(100.0, 80.0), "3.00x tok/s, - TTFT p50 -> NOT met"),
    ],
)
def test_target_needs_one_and_a_half_times_the_throughput_and_a_ttft_no_worse(
    ours: LevelSummary, theirs: LevelSummary, verdict: str
) -> None:
    line = target_line({SWITCHYARD: {16: ours}, PEER: {16: theirs}})
    assert line == (
        "target: Switchyard / transformers serve output tok/s at concurrency 16 >= 1.5x, TTFT p50 no worse: " + verdict
    )


def test_target_is_not_measured_without_concurrency_16() -> None:
    line = target_line({SWITCHYARD: {4: summary(300.0, 1.0)}, PEER: {4: summary(100.0, 2.0)}})
    assert line.endswith(": not measured (concurrency 16 not in --concurrency)")


def streamed(output_tokens: int, num_chunks: int, has_usage: bool = True) -> RequestRecord:
    gaps = [0.01] * (num_chunks - 1)
    return RequestRecord(True, output_tokens=output_tokens, has_usage=has_usage, ttft_s=0.1, itl_s=gaps)


def test_token_agreement_compares_each_request_with_the_same_request_on_the_peer() -> None:
    runs = [
        LevelRun(SWITCHYARD, 1, 1, report(1.0), [streamed(4, 2), streamed(4, 2)]),
        LevelRun(PEER, 1, 1, report(1.0), [streamed(4, 4), streamed(4, 4, has_usage=False)]),
        LevelRun(SWITCHYARD, 4, 1, report(1.0), [streamed(4, 1)]),
        LevelRun(PEER, 4, 1, report(1.0), [streamed(3, 3)]),
    ]
    verdict, ours, theirs = token_agreement(runs, max_tokens=4)
    assert verdict == "output tokens per request (greedy, same weights): DIFFER on 1 of 3 requests"
    assert ours.split(";")[0].split() == [SWITCHYARD, "12", "tokens", "received"]
    assert "3/3 requests ran to max_tokens 4" in ours and "median 2 text chunks" in ours
    assert "2/3 requests ran to max_tokens 4" in theirs and "2/3 counted by the stream's usage" in theirs
    assert token_agreement(runs[:2], max_tokens=4)[0].endswith("equal on both systems for all 2 requests")


@pytest.fixture
def peer_serving() -> ModuleType:
    """The benchmark's runner module; it draws plots, so it needs the bench extra."""
    return importlib.import_module("benchmarks.peer_serving")


def test_peer_runs_transformers_serve_of_this_environment_with_continuous_batching(peer_serving: ModuleType) -> None:
    command = peer_serving.peer_command("/models/demo-llama", 8123, "bfloat16")
    assert command[0] == str(Path(sys.executable).with_name("transformers"))
    assert command[1:] == [
        "serve",
        "--continuous-batching",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--dtype",
        "bfloat16",
        "/models/demo-llama",
    ]


def test_concurrency_levels_parse_sorted_and_positive(peer_serving: ModuleType) -> None:
    assert peer_serving.parse_concurrency("16,1,4,4") == [1, 4, 16]
    for bad in ("0,1", "1,,4", "four"):
        with pytest.raises(argparse.ArgumentTypeError):
            peer_serving.parse_concurrency(bad)


def test_quick_runs_two_levels_once_with_few_requests_and_given_options_win(peer_serving: ModuleType) -> None:
    args = peer_serving.parse_args(["--quick"])
    assert (args.concurrency, args.repeats, args.workload.prompts_per_slot) == ([1, 16], 1, 2)
    args = peer_serving.parse_args(["--quick", "--concurrency", "4", "--repeats", "2", "--prompts-per-slot", "3"])
    assert (args.concurrency, args.repeats, args.workload.prompts_per_slot) == ([4], 2, 3)
    args = peer_serving.parse_args([])
    assert (args.concurrency, args.repeats, args.workload) == ([1, 4, 16, 64], 3, PeerWorkload())
    assert args.peer_dtype == "auto"
    with pytest.raises(SystemExit):
        peer_serving.parse_args(["--repeats", "0"])


def test_checkpoint_dtype_is_what_the_config_names(peer_serving: ModuleType, tmp_path: Path) -> None:
    assert peer_serving.checkpoint_dtype(str(tmp_path)) == "unknown"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert peer_serving.checkpoint_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32", "torch_dtype": "bfloat16"}))
    assert peer_serving.checkpoint_dtype(str(tmp_path)) == "float32"
