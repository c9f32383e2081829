"""The soak suite's bookkeeping: how a client's view of one answer becomes an outcome, and the
verdict a ledger gets from its scenario's rules."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from benchmarks.soak.client import Shot, classify_answer, fire
from benchmarks.soak.ledger import Entry, Ledger, Outcome, Rules, format_ledgers
from benchmarks.soak.traffic import Target, open_loop

SHOT = Shot("/v1/completions", {"model": "m", "prompt": "hi", "stream": True})


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def text_chunk(text: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def outcome_of(response: httpx.Response | Exception, shot: Shot = SHOT, hang_after_s: float = 5.0) -> Entry:
    async def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    async def go() -> Entry:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://soak") as client:
            return await fire(client, shot, hang_after_s)

    return asyncio.run(go())


STREAM = {"content-type": "text/event-stream"}
ERROR = {"error": {"message": "no", "type": "invalid_request_error"}}


def stream(*chunks: object) -> httpx.Response:
    return httpx.Response(200, headers=STREAM, content=sse(*chunks))


def answer(finish_reason: str | None) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"finish_reason": finish_reason}], "usage": {"completion_tokens": 3}})


@pytest.mark.parametrize(
    ("response", "outcome", "defect"),
    [
        (stream(text_chunk("a"), text_chunk("b", "length"), b"[DONE]"), Outcome.OK, ""),
        (stream(text_chunk("a"), {"error": ERROR["error"]}), Outcome.STREAM_ERROR, ""),
        (stream(text_chunk("a")), Outcome.LOST, ""),
        (stream(text_chunk("a"), b"[DONE]"), Outcome.LOST, ""),
        (httpx.Response(429, headers={"retry-after": "1"}, json=ERROR), Outcome.RATE_LIMITED, ""),
        (httpx.Response(503, json=ERROR), Outcome.UNAVAILABLE, "without Retry-After"),
        (httpx.Response(400, json=ERROR), Outcome.CLIENT_ERROR, ""),
        (httpx.Response(422, json={"detail": "pydantic says"}), Outcome.CLIENT_ERROR, "not in OpenAI's error shape"),
        (httpx.Response(500, json=ERROR), Outcome.SERVER_ERROR, ""),
        (answer("stop"), Outcome.OK, ""),
        (answer(None), Outcome.LOST, ""),
        (httpx.ConnectError("refused"), Outcome.CONNECTION_ERROR, ""),
    ],
    ids=[
        "done", "error-event", "closed-short", "done-unfinished", "429", "503-no-retry-after", "400",
        "422-not-openai", "500", "json-answer", "json-unfinished", "connect-error",
    ],
)  # fmt: skip
def test_each_answer_becomes_its_outcome(response: httpx.Response | Exception, outcome: Outcome, defect: str) -> None:
    entry = outcome_of(response)
    assert entry.outcome is outcome
    assert defect in entry.defect and (defect or not entry.defect)


def test_a_stream_hung_up_on_purpose_is_aborted_and_a_slow_one_hung() -> None:
    body = sse(text_chunk("a"), text_chunk("b"), text_chunk("c", "length"), b"[DONE]")
    aborted = outcome_of(
        httpx.Response(200, headers=STREAM, content=body), Shot(SHOT.path, SHOT.body, abort_after_chunks=2)
    )
    assert (aborted.outcome, aborted.tokens) == (Outcome.ABORTED, 2)

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    async def go() -> Entry:
        async with httpx.AsyncClient(transport=httpx.MockTransport(never_answers), base_url="http://soak") as client:
            return await fire(client, SHOT, hang_after_s=0.1)

    assert asyncio.run(go()).outcome is Outcome.HUNG


def test_the_verdict_names_what_the_rules_do_not_allow_leaks_and_slow_first_tokens() -> None:
    ledger = Ledger("s")
    for ttft in [0.1] * 98 + [3.0, 4.0]:
        ledger.add(Entry(Outcome.OK, tokens=4, ttft_s=ttft))
    rules = Rules(frozenset({Outcome.OK, Outcome.UNAVAILABLE}), max_p99_ttft_s=2.0)
    assert ledger.failures(rules) == ["p99 TTFT 4.00 s is above the bound 2.00 s"]
    ledger.add(Entry(Outcome.LOST, detail="the stream closed before data: [DONE]"))
    ledger.add(Entry(Outcome.UNAVAILABLE, status=503, defect="HTTP 503 without Retry-After"))
    ledger.leaked_blocks = 3
    failures = ledger.failures(Rules(rules.allowed))
    assert failures == [
        "1 lost (not allowed here), e.g. the stream closed before data: [DONE]",
        "1 malformed answers, e.g. HTTP 503 without Retry-After",
        "the engines still hold 3 KV blocks and 0 requests",
    ]
    table = format_ledgers([(ledger, rules)])
    assert "| s " in table and "FAIL" in table


def test_a_ledger_with_nothing_sent_fails() -> None:
    assert Ledger("empty").failures(Rules(frozenset(Outcome))) == ["no request was sent"]


@pytest.mark.parametrize(
    ("status", "headers", "body", "outcome"),
    [
        (200, {"content-type": "application/json"}, b'{"object": "list"}', Outcome.OK),
        (200, {"content-type": "text/event-stream"}, sse(text_chunk("a", "stop"), b"[DONE]"), Outcome.OK),
        (200, {"content-type": "text/event-stream"}, sse(text_chunk("a")), Outcome.LOST),
        (200, {"content-type": "text/event-stream"}, sse(b"{torn"), Outcome.LOST),
        (200, {"content-type": "text/event-stream"}, sse(b"[1, 2]"), Outcome.LOST),
        (200, {"content-type": "text/event-stream"}, sse({"error": {"message": "x"}}, b"[DONE]"), Outcome.STREAM_ERROR),
        (422, {}, b'{"detail": []}', Outcome.CLIENT_ERROR),
    ],
)
def test_a_whole_answer_of_any_operation_becomes_its_outcome(
    status: int, headers: dict[str, str], body: bytes, outcome: Outcome
) -> None:
    entry = classify_answer(status, headers, body)
    assert entry.outcome is outcome, entry
    assert bool(entry.defect) == (status == 422)  # not in OpenAI's shape


def test_a_refusal_keeps_its_error_code() -> None:
    body = json.dumps({"error": {"message": "down", "type": "server_error", "code": "store_unavailable"}}).encode()
    entry = outcome_of(httpx.Response(503, headers={"Retry-After": "1"}, content=body))
    assert (entry.outcome, entry.code, entry.defect) == (Outcome.UNAVAILABLE, "store_unavailable", "")


def test_a_shot_hung_up_on_before_its_answer_is_aborted() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    async def run() -> Entry:
        async with httpx.AsyncClient(transport=httpx.MockTransport(slow), base_url="http://soak") as client:
            return await fire(client, Shot("/v1/completions", {}, abort_after_s=0.05), hang_after_s=10)

    assert asyncio.run(run()).outcome is Outcome.ABORTED


def test_the_open_loop_stops_at_its_period_however_far_behind_the_client_is() -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"usage": {"completion_tokens": 1}, "choices": [{"finish_reason": "stop"}]})

    async def run() -> tuple[int, float]:
        target = Target("http://soak", "m", "http://soak/metrics", 1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://soak") as client:
            start = time.monotonic()
            entries = await open_loop(client, target, lambda: Shot("/v1/completions", {}), 1e6, 0.2)
            return len(entries), time.monotonic() - start

    sent, seconds = asyncio.run(run())
    assert 0 < sent < 1e6 * 0.2 and seconds < 5


def test_a_shapeless_5xx_is_a_defect_unless_the_rules_allow_the_proxys() -> None:
    proxy_500 = outcome_of(httpx.Response(500, content=b"Internal Server Error"))
    ledger = Ledger("router killed", entries=[proxy_500])
    allowed = frozenset({Outcome.SERVER_ERROR})
    assert ledger.failures(Rules(allowed)) == [f"1 malformed answers, e.g. {proxy_500.defect}"]
    assert ledger.failures(Rules(allowed, shapeless_5xx_allowed=True)) == []
