"""Serving metrics: reading one streamed response into a timed record, and the report of many records.

A stream is a sequence of SSE lines `data: {chunk}` ending with `data: [DONE]`, or closing after a
chunk whose choice carries a `finish_reason` (transformers serve sends no `[DONE]`); blank lines and
`:` comment lines are skipped, and an `error` chunk ends it as a failure. The report is pure
arithmetic on plain records, so it can be tested with hand-made inputs. Definitions follow vLLM's
benchmark_serving:

    TTFT  request sent -> first chunk with non-empty text
    ITL   gaps between successive text chunks, pooled over all successful requests
    TPOT  per request, (e2e - TTFT) / (output_tokens - 1), for requests of more than one output token
    e2e   request sent -> end of the stream

Percentiles interpolate linearly between the two nearest samples (numpy's default).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = [
    "LatencyStats",
    "LoadReport",
    "RequestRecord",
    "StreamOutcome",
    "chunk_finish_reason",
    "chunk_text",
    "compute_report",
    "error_body_message",
    "format_report",
    "percentile",
    "read_stream",
    "record_stream",
    "sse_data",
    "summarize_latencies",
    "time_per_output_token_s",
]

# Failure messages quote at most this much of a response body or chunk.
_MAX_QUOTE_CHARS = 200


@dataclass(frozen=True)
class RequestRecord:
    """One streamed request; times are `time.perf_counter()` differences, in seconds."""

    # True when the stream ran to `data: [DONE]` (or closed after a finish_reason) with some text and no error.
    is_success: bool
    # The server's usage.prompt_tokens when reported, else the prompt length the generator asked for.
    prompt_tokens: int = 0
    # usage.completion_tokens when the stream reported usage, else the number of text chunks.
    output_tokens: int = 0
    # Whether output_tokens came from the stream's usage (False: counted from text chunks).
    has_usage: bool = False
    # Request sent -> first chunk with non-empty text; None when no text arrived.
    ttft_s: float | None = None
    # Gaps between successive text chunks, in arrival order (one fewer than the text chunks).
    itl_s: list[float] = field(default_factory=list)
    # Request sent -> end of the stream, or -> the failure.
    latency_s: float = 0.0
    # HTTP status of the response; None when none came (connection error, timeout).
    status_code: int | None = None
    # Why the request failed, e.g. "HTTP 503: overloaded"; empty on success.
    error: str = ""


@dataclass(frozen=True)
class LatencyStats:
    """Mean, median and p99 of one latency, in milliseconds; None when there were no samples."""

    # Samples summarized: successful requests, or for ITL the gaps between text chunks.
    count: int
    mean_ms: float | None
    median_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class LoadReport:
    """The outcome of one load run; throughputs count successful requests only."""

    num_completed: int
    num_failed: int
    # Wall time from the first request sent to the last stream finished.
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    # Successful requests per second.
    request_throughput: float
    # Output tokens per second.
    output_throughput: float
    # Prompt plus output tokens per second.
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    # Successful requests whose stream carried no usage, so output tokens were counted from text chunks.
    num_without_usage: int
    # Distinct failure messages and how many requests failed with each.
    error_counts: dict[str, int]


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank lines, `:` comments and other fields."""
    if not line.startswith("data:"):
        return None
    return line.removeprefix("data:").removeprefix(" ")


def chunk_text(chunk: dict[str, object]) -> str:
    """The text a completions (`choices[].text`) or chat (`choices[].delta.content`) chunk carries."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if text is None and isinstance(choice.get("delta"), dict):
            text = choice["delta"].get("content")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def chunk_finish_reason(chunk: dict[str, object]) -> str | None:
    """The finish_reason of the chunk's first choice that has one, e.g. "length"; None mid-stream."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return None
    reasons = [choice.get("finish_reason") for choice in choices if isinstance(choice, dict)]
    return next((reason for reason in reasons if isinstance(reason, str)), None)


def _describe_error(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message", error)
        kind = error.get("type") or error.get("code")
        return f"{kind}: {message}" if kind else str(message)
    return str(error)


@dataclass
class StreamOutcome:
    """What one SSE stream said, as it was read."""

    # time.perf_counter() at each chunk with non-empty text.
    text_times: list[float] = field(default_factory=list)
    # The last `usage` object the stream carried, if any.
    usage: dict[str, object] | None = None
    # Why the stream counts as failed; empty while it does not.
    error: str = ""
    # Whether `data: [DONE]` arrived.
    is_done: bool = False
    # The last finish_reason a choice carried; a stream that closes after one is complete without [DONE].
    finish_reason: str | None = None


async def read_stream(lines: AsyncIterator[str]) -> StreamOutcome:
    """Reads SSE lines up to `data: [DONE]` or the first error chunk, timing each text chunk."""
    outcome = StreamOutcome()
    async for line in lines:
        data = sse_data(line)
        if data is None:
            continue
        if data.strip() == "[DONE]":
            outcome.is_done = True
            return outcome
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            outcome.error = f"malformed chunk: {data[:_MAX_QUOTE_CHARS]}"
            return outcome
        if chunk.get("error") is not None:
            outcome.error = f"stream error: {_describe_error(chunk['error'])}"
            return outcome
        if isinstance(chunk.get("usage"), dict):
            outcome.usage = chunk["usage"]
        if chunk_text(chunk):
            outcome.text_times.append(time.perf_counter())
        outcome.finish_reason = chunk_finish_reason(chunk) or outcome.finish_reason
    if outcome.finish_reason is None:
        outcome.error = "stream ended before data: [DONE] or a finish_reason"
    return outcome


def _usage_count(usage: dict[str, object] | None, key: str) -> int | None:
    value = None if usage is None else usage.get(key)
    return value if isinstance(value, int) else None


def record_stream(outcome: StreamOutcome, prompt_tokens: int, start: float, end: float) -> RequestRecord:
    """The record of a stream read between `start` and `end`; `prompt_tokens` counts when usage lacks it."""
    times = outcome.text_times
    error = outcome.error or ("" if times else "stream carried no text")
    output_tokens = _usage_count(outcome.usage, "completion_tokens")
    reported_prompt_tokens = _usage_count(outcome.usage, "prompt_tokens")
    return RequestRecord(
        is_success=not error,
        prompt_tokens=prompt_tokens if reported_prompt_tokens is None else reported_prompt_tokens,
        output_tokens=len(times) if output_tokens is None else output_tokens,
        has_usage=output_tokens is not None,
        ttft_s=times[0] - start if times else None,
        itl_s=[later - earlier for earlier, later in itertools.pairwise(times)],
        latency_s=end - start,
        status_code=200,
        error=error,
    )


def error_body_message(body: bytes) -> str:
    """The message of an error response body: its OpenAI `error` object, else the start of its text."""
    text = body.decode(errors="replace")
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and "error" in parsed:
            return _describe_error(parsed["error"])
    return text[:_MAX_QUOTE_CHARS]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of non-empty `values`, linearly interpolated."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def time_per_output_token_s(record: RequestRecord) -> float | None:
    """Decode time per token after the first; None for one output token or no text."""
    if record.ttft_s is None or record.output_tokens <= 1:
        return None
    return (record.latency_s - record.ttft_s) / (record.output_tokens - 1)


def summarize_latencies(values_s: list[float]) -> LatencyStats:
    """Mean, median and p99 of latencies given in seconds, reported in milliseconds."""
    if not values_s:
        return LatencyStats(count=0, mean_ms=None, median_ms=None, p99_ms=None)
    values_ms = [value * 1000 for value in values_s]
    return LatencyStats(
        count=len(values_ms),
        mean_ms=statistics.fmean(values_ms),
        median_ms=percentile(values_ms, 50),
        p99_ms=percentile(values_ms, 99),
    )


def compute_report(records: list[RequestRecord], duration_s: float) -> LoadReport:
    """The report of a run: `records` of every request sent, over `duration_s` seconds of wall time."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    done = [record for record in records if record.is_success]
    failed = [record for record in records if not record.is_success]
    input_tokens = sum(record.prompt_tokens for record in done)
    output_tokens = sum(record.output_tokens for record in done)
    tpots = [tpot for tpot in map(time_per_output_token_s, done) if tpot is not None]
    return LoadReport(
        num_completed=len(done),
        num_failed=len(failed),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(done) / duration_s,
        output_throughput=output_tokens / duration_s,
        total_token_throughput=(input_tokens + output_tokens) / duration_s,
        ttft=summarize_latencies([record.ttft_s for record in done if record.ttft_s is not None]),
        tpot=summarize_latencies(tpots),
        itl=summarize_latencies([gap for record in done for gap in record.itl_s]),
        e2e=summarize_latencies([record.latency_s for record in done]),
        num_without_usage=sum(1 for record in done if not record.has_usage),
        error_counts=dict(Counter(record.error for record in failed)),
    )


_WIDTH = 50
# (section title, LoadReport attribute, short name) of each latency section of the table.
_LATENCY_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("Time to First Token", "ttft", "TTFT"),
    ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
    ("Inter-token Latency", "itl", "ITL"),
    ("End-to-end Latency", "e2e", "E2EL"),
)


def _line(label: str, value: str) -> str:
    return f"{label:<40}{value:>10}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_report(report: LoadReport) -> str:
    """The report as benchmark_serving's table, plus any failure messages."""
    lines = [
        " Serving Benchmark Result ".center(_WIDTH, "="),
        _line("Successful requests:", str(report.num_completed)),
        _line("Failed requests:", str(report.num_failed)),
        _line("Benchmark duration (s):", f"{report.duration_s:.2f}"),
        _line("Total input tokens:", str(report.total_input_tokens)),
        _line("Total generated tokens:", str(report.total_output_tokens)),
        _line("Request throughput (req/s):", f"{report.request_throughput:.2f}"),
        _line("Output token throughput (tok/s):", f"{report.output_throughput:.2f}"),
        _line("Total token throughput (tok/s):", f"{report.total_token_throughput:.2f}"),
    ]
    for title, attribute, short in _LATENCY_SECTIONS:
        stats: LatencyStats = getattr(report, attribute)
        lines.append(f" {title} ".center(_WIDTH, "-"))
        lines.append(_line(f"Mean {short} (ms):", _ms(stats.mean_ms)))
        lines.append(_line(f"Median {short} (ms):", _ms(stats.median_ms)))
        lines.append(_line(f"P99 {short} (ms):", _ms(stats.p99_ms)))
    lines.append("=" * _WIDTH)
    if report.num_without_usage:
        lines.append(
            f"note: {report.num_without_usage} stream(s) reported no usage; "
            "their output tokens were counted from text chunks"
        )
    for message, count in report.error_counts.items():
        lines.append(f"failed x{count}: {message}")
    return "\n".join(lines)
