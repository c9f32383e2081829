"""Load generator: SSE parsing, failures, request bodies, the concurrency cap, seeded arrivals, report arithmetic,
and the latency plot of its CLI.

No network: every run goes through `httpx.MockTransport` serving canned SSE streams.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from benchmarks import load_generator
from benchmarks.load_generator import (
    LoadConfig,
    LoadRun,
    PlannedRequest,
    arrival_offsets,
    build_requests,
    run_load,
    run_requests,
    send_request,
)
from benchmarks.serving_metrics import (
    LoadReport,
    RequestRecord,
    compute_report,
    format_report,
    percentile,
    sse_data,
    time_per_output_token_s,
)

URL = "http://bench.test:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def sse(*events: dict[str, object] | str) -> bytes:
    """An SSE body: dicts become `data: {json}` events, strings are written as they are."""
    lines = [event if isinstance(event, str) else f"data: {json.dumps(event)}\n\n" for event in events]
    return "".join(lines).encode()


def text_chunk(text: str) -> dict[str, object]:
    return {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": None}]}


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return {"object": "text_completion", "choices": [], "usage": usage}


def streaming(body: bytes) -> Handler:
    """A handler answering every request with the same 200 event stream."""
    return lambda request: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def load(transport: httpx.MockTransport, **overrides: object) -> LoadReport:
    config = LoadConfig(**{"url": URL, "model": "demo", "num_prompts": 3, "input_len": 8, "output_len": 3} | overrides)
    return asyncio.run(run_load(config, transport))


GOOD_STREAM = sse(
    ": keep-alive comment\n\n",
    text_chunk("a"),
    "\n",
    text_chunk(""),
    text_chunk("b"),
    text_chunk("c"),
    usage_chunk(8, 3),
    "data: [DONE]\n\n",
    "data: not json, after the end\n\n",
)


def test_sse_data_reads_data_lines_and_skips_comments_blanks_and_other_fields() -> None:
    assert sse_data('data: {"a": 1}') == '{"a": 1}'
    assert sse_data("data:[DONE]") == "[DONE]"
    assert sse_data(": ping") is None
    assert sse_data("") is None
    assert sse_data("event: message") is None


def test_stream_with_comments_blank_lines_and_usage_completes() -> None:
    report = load(httpx.MockTransport(streaming(GOOD_STREAM)))
    assert (report.num_completed, report.num_failed) == (3, 0)
    assert (report.total_input_tokens, report.total_output_tokens) == (24, 9)
    # Three text chunks per request (the empty one is no content): one TTFT, two gaps.
    assert (report.ttft.count, report.itl.count, report.tpot.count, report.e2e.count) == (3, 6, 3, 3)
    assert report.num_without_usage == 0
    assert report.error_counts == {}


def test_without_usage_output_tokens_are_counted_from_text_chunks() -> None:
    body = sse(text_chunk("a"), text_chunk("b"), "data: [DONE]\n\n")
    report = load(httpx.MockTransport(streaming(body)))
    assert report.num_completed == 3
    # Prompt tokens fall back to the length the generator asked for.
    assert (report.total_input_tokens, report.total_output_tokens) == (24, 6)
    assert report.num_without_usage == 3
    assert "counted from text chunks" in format_report(report)


def test_chat_deltas_count_as_text() -> None:
    delta = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    role_only = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    body = sse(role_only, delta, delta, usage_chunk(8, 2), "data: [DONE]\n\n")
    report = load(httpx.MockTransport(streaming(body)), endpoint="chat")
    assert (report.num_completed, report.total_output_tokens, report.itl.count) == (3, 6, 3)


def test_error_chunk_fails_the_request() -> None:
    body = sse(text_chunk("a"), {"error": {"message": "engine died", "type": "internal_error"}}, "data: [DONE]\n\n")
    report = load(httpx.MockTransport(streaming(body)))
    assert (report.num_completed, report.num_failed) == (0, 3)
    assert report.error_counts == {"stream error: internal_error: engine died": 3}
    assert report.ttft.mean_ms is None


def test_non_200_status_fails_with_status_and_message() -> None:
    error = {"error": {"message": "model 'demo' is overloaded", "type": "overloaded", "code": 503}}
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json=error))
    planned = PlannedRequest("/v1/completions", {"model": "demo"}, prompt_tokens=8)

    async def send_one() -> RequestRecord:
        async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
            return await send_request(client, planned)

    record = asyncio.run(send_one())
    assert not record.is_success
    assert record.status_code == 503
    assert record.error == "HTTP 503: overloaded: model 'demo' is overloaded"
    assert load(transport).num_failed == 3


def test_stream_that_stops_before_done_or_a_finish_reason_fails() -> None:
    report = load(httpx.MockTransport(streaming(sse(text_chunk("a"), text_chunk("b")))))
    assert report.error_counts == {"stream ended before data: [DONE] or a finish_reason": 3}


def test_stream_that_closes_after_a_finish_reason_without_done_completes() -> None:
    # transformers serve's completions stream: the last chunk carries the finish_reason and the usage, then it closes.
    last = {"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    body = sse(text_chunk("a"), text_chunk("b"), last | {"usage": {"prompt_tokens": 8, "completion_tokens": 3}})
    report = load(httpx.MockTransport(streaming(body)))
    assert (report.num_completed, report.num_failed) == (3, 0)
    assert report.total_output_tokens == 9 and report.num_without_usage == 0


def test_stream_without_text_fails() -> None:
    report = load(httpx.MockTransport(streaming(sse(usage_chunk(8, 0), "data: [DONE]\n\n"))))
    assert report.error_counts == {"stream carried no text": 3}


def test_malformed_chunk_fails() -> None:
    report = load(httpx.MockTransport(streaming(sse("data: {truncated\n\n", "data: [DONE]\n\n"))))
    assert report.error_counts == {"malformed chunk: {truncated": 3}


def test_connection_error_fails_without_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    report = load(httpx.MockTransport(refuse))
    assert report.error_counts == {"ConnectError: connection refused": 3}


def capture_requests(endpoint: str, **overrides: object) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streaming(GOOD_STREAM)(request)

    settings = {"endpoint": endpoint, "input_len": 5, "output_len": 7, "vocab_range": (10, 20)} | overrides
    load(httpx.MockTransport(handler), **settings)
    return seen


def test_completions_requests_stream_exact_random_token_prompts_to_the_given_url() -> None:
    requests = capture_requests("completions")
    assert len(requests) == 3
    for request in requests:
        assert (request.method, str(request.url)) == ("POST", f"{URL}/v1/completions")
        body = json.loads(request.content)
        prompt = body.pop("prompt")
        assert len(prompt) == 5 and all(10 <= token_id < 20 for token_id in prompt)
        assert body == {
            "model": "demo",
            "max_tokens": 7,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }


def test_text_prompts_without_ignore_eos_send_words_and_leave_the_field_out() -> None:
    requests = capture_requests("completions", text_prompts=True, ignore_eos=False)
    assert len(requests) == 3
    prompts = []
    for request in requests:
        assert str(request.url) == f"{URL}/v1/completions"
        body = json.loads(request.content)
        prompt = body.pop("prompt")
        assert isinstance(prompt, str) and len(prompt.split()) == 5
        prompts.append(prompt)
        assert body == {
            "model": "demo",
            "max_tokens": 7,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    assert len(set(prompts)) == 3


def test_text_prompts_are_for_completions_only() -> None:
    with pytest.raises(ValueError, match="text_prompts"):
        LoadConfig(url=URL, model="demo", endpoint="chat", text_prompts=True)


def test_records_come_back_in_request_order_whatever_order_the_streams_end_in() -> None:
    config = LoadConfig(url=URL, model="demo", num_prompts=4, input_len=3, text_prompts=True)
    prompts = [planned.body["prompt"] for planned in build_requests(config)]

    class DelayedStream(httpx.AsyncByteStream):
        """A stream of `index + 1` tokens that ends later the earlier its request was planned."""

        def __init__(self, index: int) -> None:
            self.index = index

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(4 * (len(prompts) - self.index)):
                await asyncio.sleep(0)
            yield sse(text_chunk("x"), usage_chunk(3, self.index + 1), "data: [DONE]\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=DelayedStream(prompts.index(json.loads(request.content)["prompt"])))

    run = asyncio.run(run_requests(config, httpx.MockTransport(handler)))
    assert [record.output_tokens for record in run.records] == [1, 2, 3, 4]
    assert run.duration_s > 0


def test_chat_requests_send_one_user_message_of_random_words() -> None:
    for request in capture_requests("chat"):
        assert str(request.url) == f"{URL}/v1/chat/completions"
        body = json.loads(request.content)
        [message] = body.pop("messages")
        assert message["role"] == "user" and len(message["content"].split()) == 5
        assert body["max_completion_tokens"] == 7 and "max_tokens" not in body
        assert body["ignore_eos"] is True and body["stream"] is True


def test_prompts_are_seeded() -> None:
    config = LoadConfig(url=URL, model="demo", num_prompts=4, input_len=16)
    first, again = build_requests(config), build_requests(config)
    other_seed = build_requests(LoadConfig(url=URL, model="demo", num_prompts=4, input_len=16, seed=1))
    assert [r.body for r in first] == [r.body for r in again]
    assert [r.body for r in first] != [r.body for r in other_seed]
    assert len({json.dumps(r.body["prompt"]) for r in first}) == 4


class SlowStream(httpx.AsyncByteStream):
    """GOOD_STREAM, handing the event loop to other requests between chunks; calls `on_close` when the
    client closes the response (which it does after `data: [DONE]`, before the stream's last line)."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self.on_close = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in GOOD_STREAM.split(b"\n\n"):
            await asyncio.sleep(0)
            yield event + b"\n\n"

    async def aclose(self) -> None:
        self.on_close()


def max_in_flight_under(concurrency: int | None, num_prompts: int) -> tuple[int, int]:
    """(most requests the server saw open at once, requests completed) for a run of slow streams."""
    in_flight, most = 0, 0

    def close() -> None:
        nonlocal in_flight
        in_flight -= 1

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        return httpx.Response(200, stream=SlowStream(close))

    report = load(httpx.MockTransport(handler), num_prompts=num_prompts, concurrency=concurrency)
    assert in_flight == 0
    return most, report.num_completed


def test_concurrency_cap_is_respected_and_filled() -> None:
    assert max_in_flight_under(concurrency=4, num_prompts=20) == (4, 20)
    assert max_in_flight_under(concurrency=1, num_prompts=5) == (1, 5)


def test_without_cap_every_request_is_in_flight_at_once() -> None:
    assert max_in_flight_under(concurrency=None, num_prompts=12) == (12, 12)


def test_request_rate_run_completes_every_request() -> None:
    report = load(httpx.MockTransport(streaming(GOOD_STREAM)), num_prompts=5, request_rate=1e6, concurrency=2)
    assert (report.num_completed, report.num_failed) == (5, 0)


def test_poisson_arrivals_are_seeded() -> None:
    offsets = arrival_offsets(1000, request_rate=4.0, seed=0)
    assert offsets == arrival_offsets(1000, request_rate=4.0, seed=0)
    assert offsets != arrival_offsets(1000, request_rate=4.0, seed=1)
    assert offsets[0] == 0.0
    assert all(later >= earlier for earlier, later in itertools.pairwise(offsets))
    # Exponential gaps of mean 1 / rate: 999 gaps land within 10% of 0.25 s on average.
    assert offsets[-1] / 999 == pytest.approx(0.25, rel=0.1)


def test_infinite_rate_sends_everything_at_the_start() -> None:
    assert arrival_offsets(5, request_rate=math.inf, seed=0) == [0.0] * 5


def test_percentile_interpolates_linearly() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(value) for value in range(101)], 99) == 99.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_tpot_excludes_the_first_token() -> None:
    assert time_per_output_token_s(RequestRecord(True, output_tokens=5, ttft_s=0.1, latency_s=0.5)) == pytest.approx(
        0.1
    )
    assert time_per_output_token_s(RequestRecord(True, output_tokens=1, ttft_s=0.1, latency_s=0.1)) is None


def test_report_arithmetic_on_hand_made_records() -> None:
    records = [
        RequestRecord(
            True, prompt_tokens=10, output_tokens=5, has_usage=True, ttft_s=0.1, itl_s=[0.1] * 4, latency_s=0.5
        ),
        RequestRecord(
            True, prompt_tokens=10, output_tokens=3, has_usage=True, ttft_s=0.3, itl_s=[0.2, 0.4], latency_s=0.9
        ),
        RequestRecord(False, latency_s=0.05, status_code=500, error="HTTP 500: boom"),
    ]
    report = compute_report(records, duration_s=2.0)
    assert (report.num_completed, report.num_failed) == (2, 1)
    assert (report.total_input_tokens, report.total_output_tokens) == (20, 8)
    assert report.request_throughput == 1.0
    assert report.output_throughput == 4.0
    assert report.total_token_throughput == 14.0
    assert (report.ttft.mean_ms, report.ttft.median_ms) == (pytest.approx(200.0), pytest.approx(200.0))
    assert report.ttft.p99_ms == pytest.approx(298.0)
    # TPOTs: (0.5 - 0.1) / 4 = 0.1 and (0.9 - 0.3) / 2 = 0.3.
    assert (report.tpot.mean_ms, report.tpot.p99_ms) == (pytest.approx(200.0), pytest.approx(298.0))
    # ITL pools the gaps: 0.1 x4, 0.2, 0.4.
    assert report.itl.count == 6
    assert report.itl.mean_ms == pytest.approx(1000 * 1.0 / 6)
    assert report.itl.median_ms == pytest.approx(100.0)
    assert report.e2e.mean_ms == pytest.approx(700.0)
    assert report.error_counts == {"HTTP 500: boom": 1}


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LoadConfig(url=URL, model="demo", concurrency=0)
    with pytest.raises(ValueError, match="request_rate"):
        LoadConfig(url=URL, model="demo", request_rate=math.nan)
    with pytest.raises(ValueError, match="vocab_range"):
        LoadConfig(url=URL, model="demo", vocab_range=(5, 5))
    with pytest.raises(ValueError, match="url"):
        LoadConfig(url="127.0.0.1:8000", model="demo")


def test_cli_builds_the_config() -> None:
    args = load_generator.parse_args(
        ["--url", URL, "--model", "demo", "--num-prompts", "8", "--request-rate", "inf", "--vocab-range", "5", "100"]
    )
    assert args.config == LoadConfig(url=URL, model="demo", num_prompts=8, vocab_range=(5, 100))
    args = load_generator.parse_args(["--url", URL, "--model", "demo", "--no-ignore-eos", "--text-prompts"])
    assert args.config == LoadConfig(url=URL, model="demo", ignore_eos=False, text_prompts=True)
    with pytest.raises(SystemExit):
        load_generator.parse_args(["--url", URL, "--model", "demo", "--concurrency", "0"])


def fake_run(monkeypatch: pytest.MonkeyPatch, records: list[RequestRecord]) -> None:
    """Makes the CLI's run return `records`, over one second."""

    async def fake_run_requests(config: LoadConfig, transport: httpx.AsyncBaseTransport | None = None) -> LoadRun:
        return LoadRun(records, duration_s=1.0)

    monkeypatch.setattr(load_generator, "run_requests", fake_run_requests)


def test_main_writes_json_and_exits_nonzero_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_run(monkeypatch, [RequestRecord(False, status_code=500, error="HTTP 500: boom")])
    out = tmp_path / "report.json"
    assert load_generator.main(["--url", URL, "--model", "demo", "--json", str(out)]) == 1
    written = json.loads(out.read_text())
    assert written["config"]["request_rate"] == "inf"
    assert written["report"]["num_failed"] == 1
    assert written["report"]["error_counts"] == {"HTTP 500: boom": 1}


def test_main_plots_the_latency_distributions_to_the_plot_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record = RequestRecord(True, output_tokens=3, has_usage=True, ttft_s=0.1, itl_s=[0.02, 0.03], latency_s=0.15)
    fake_run(monkeypatch, [record, record])
    assert load_generator.main(["--url", URL, "--model", "demo", "--plot-dir", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / "latency_cdf.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"wrote {png}" in capsys.readouterr().out
