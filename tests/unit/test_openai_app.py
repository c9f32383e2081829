"""The OpenAI HTTP surface over a fake ModelClient: shapes, streams, translation and every error path.

No Ray cluster and no weights: the FastAPI app is driven in process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from deployments.errors import ContextLengthExceededError, InvalidRequestError, ModelUnavailableError, invalid_request
from deployments.generation import GenerationChunk, GenerationRequest, Tokenized, TokenizeRequest, TokenLogprob
from deployments.ingress.admission import Admission
from deployments.ingress.model_states import ModelState
from deployments.ingress.openai_app import ModelCard, build_openai_app
from engine import ContextLengthError, EngineDeadError, InvalidGrammarError

MODEL = "tiny"
CARDS = [ModelCard(MODEL, "demo:llama", 1_700_000_000), ModelCard("org/other-7b", "/models/other", 1_700_000_001)]
PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}
BODIES = {
    "completion": {"model": MODEL, "prompt": "Say hi"},
    "chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
}
NUM_PROMPT_TOKENS = 5


def chunk(text: str, num_generated: int, index: int = 0, finish: str | None = None) -> GenerationChunk:
    return GenerationChunk(index, text, [7], None, finish, NUM_PROMPT_TOKENS, num_generated)


# "Hello wörld" in three chunks of one token each, with logprobs; the last ends the choice.
TOKENS = ["Hel", "lo", " wörld"]
LOGPROBS = [TokenLogprob(token, -0.5 * i, [(token, -0.5 * i), ("x", -3.0)]) for i, token in enumerate(TOKENS)]
CHUNKS = [
    GenerationChunk(0, token, [7], [LOGPROBS[i]], "stop" if i == 2 else None, NUM_PROMPT_TOKENS, i + 1)
    for i, token in enumerate(TOKENS)
]
TEXT = "".join(TOKENS)
# Two choices, interleaved.
TWO_CHOICES = [chunk("a", 1), chunk("x", 1, 1), chunk("b", 2, 0, "length"), chunk("yz", 2, 1, "stop")]


class FakeModelClient:
    """Records each request, yields its scripted chunks, and may raise after some of them."""

    def __init__(
        self,
        chunks: list[GenerationChunk] | None = None,
        *,
        error: BaseException | None = None,
        num_chunks_before_error: int = 0,
    ) -> None:
        self.chunks = CHUNKS if chunks is None else chunks
        self.error = error
        self.num_chunks_before_error = num_chunks_before_error
        self.requests: list[GenerationRequest] = []
        self.num_closed = 0

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.requests.append(request)
        try:
            num_chunks = len(self.chunks) if self.error is None else self.num_chunks_before_error
            for item in self.chunks[:num_chunks]:
                yield item
            if self.error is not None:
                raise self.error
        finally:
            self.num_closed += 1

    @property
    def request(self) -> GenerationRequest:
        assert len(self.requests) == 1
        return self.requests[0]


def make_app(client: FakeModelClient | None = None) -> FastAPI:
    return build_openai_app({MODEL: client or FakeModelClient(), "org/other-7b": FakeModelClient()}, CARDS)


def call(app: FastAPI, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(method, path, json=body, content=raw)

    return asyncio.run(go())


def post(endpoint: str, client: FakeModelClient | None = None, **fields: Any) -> httpx.Response:
    return call(make_app(client), "POST", PATHS[endpoint], BODIES[endpoint] | fields)


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, after checking its framing and the closing [DONE]."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    frames = response.text.split("\n\n")[:-1]
    assert all(frame.startswith("data: ") for frame in frames), frames
    payloads = [frame.removeprefix("data: ") for frame in frames]
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(payload) for payload in payloads[:-1]]


def streamed_text(events: list[dict[str, Any]], index: int = 0) -> str:
    choices = [choice for event in events for choice in event["choices"] if choice["index"] == index]
    return "".join(choice.get("text", choice.get("delta", {}).get("content", "")) for choice in choices)


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error body (never FastAPI's `detail`)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# ----- /v1/models and /health -------------------------------------------------------------------


def test_list_models_lists_every_card() -> None:
    body = call(make_app(), "GET", "/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["root"], m["created"]) for m in body["data"]] == [
        (card.id, "model", card.root, card.created) for card in CARDS
    ]


@pytest.mark.parametrize("card", CARDS, ids=lambda card: card.id)
def test_get_model_by_id_including_a_slash(card: ModelCard) -> None:
    response = call(make_app(), "GET", f"/v1/models/{card.id}")
    assert response.status_code == 200
    expected = {"id": card.id, "object": "model", "created": card.created, "root": card.root}
    assert response.json() == expected | {"owned_by": "switchyard"}


def test_get_unknown_model_is_404_naming_it() -> None:
    error = openai_error(call(make_app(), "GET", "/v1/models/org/nope"), 404)
    assert "org/nope" in error["message"]
    assert error["param"] == "model"


def test_health_is_ok() -> None:
    assert call(make_app(), "GET", "/health").status_code == 200


# ----- whole responses --------------------------------------------------------------------------


def test_completion_response_has_the_openai_shape() -> None:
    response = post("completion")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"] == [{"index": 0, "text": TEXT, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_completion_response_has_the_openai_shape() -> None:
    body = post("chat").json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": TEXT}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


# ----- streams ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "kind"), [("completion", "text_completion"), ("chat", "chat.completion.chunk")])
def test_stream_is_sse_events_of_the_scripted_text_ending_with_done(endpoint: str, kind: str) -> None:
    events = sse_events(post(endpoint, stream=True))
    assert len(events) == len(CHUNKS)
    assert {event["object"] for event in events} == {kind}
    assert len({event["id"] for event in events}) == 1
    assert streamed_text(events) == TEXT
    assert [event["choices"][0]["finish_reason"] for event in events] == [None, None, "stop"]
    assert not any("usage" in event for event in events)


def test_chat_stream_sends_the_assistant_role_once_at_the_start() -> None:
    events = sse_events(post("chat", stream=True))
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0] == {"role": "assistant", "content": "Hel"}
    assert all("role" not in delta for delta in deltas[1:])


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_stream_with_include_usage_ends_with_a_usage_only_event(endpoint: str) -> None:
    events = sse_events(post(endpoint, stream=True, stream_options={"include_usage": True}))
    *content, last = events
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert len(content) == len(CHUNKS) and not any("usage" in event for event in content)


def test_two_choices_stream_with_their_own_indexes() -> None:
    events = sse_events(post("chat", FakeModelClient(TWO_CHOICES), stream=True, n=2))
    assert [event["choices"][0]["index"] for event in events] == [0, 1, 0, 1]
    assert [event["choices"][0]["delta"].get("role") for event in events] == ["assistant", "assistant", None, None]
    assert (streamed_text(events, 0), streamed_text(events, 1)) == ("ab", "xyz")


def test_two_choices_whole_response_sums_their_tokens_in_usage() -> None:
    body = post("completion", FakeModelClient(TWO_CHOICES), n=2).json()
    choices = body["choices"]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in choices] == [(0, "ab", "length"), (1, "xyz", "stop")]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


# ----- logprobs ---------------------------------------------------------------------------------


def expected_chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return one(entry.token, entry.logprob) | {"top_logprobs": [one(token, logprob) for token, logprob in entry.top]}


def test_chat_logprobs_carry_bytes_and_top_alternatives() -> None:
    client = FakeModelClient()
    body = post("chat", client, logprobs=True, top_logprobs=2).json()
    assert (client.request.params.logprobs, client.request.params.top_logprobs) == (True, 2)
    assert body["choices"][0]["logprobs"]["content"] == [expected_chat_logprob(entry) for entry in LOGPROBS]
    assert body["choices"][0]["logprobs"]["content"][2]["bytes"] == [32, 119, 195, 182, 114, 108, 100]


def test_completion_logprobs_report_text_offsets_accumulating_token_lengths() -> None:
    client = FakeModelClient()
    logprobs = post("completion", client, logprobs=2).json()["choices"][0]["logprobs"]
    assert (client.request.params.logprobs, client.request.params.top_logprobs) == (True, 2)
    assert logprobs == {
        "tokens": TOKENS,
        "token_logprobs": [entry.logprob for entry in LOGPROBS],
        "top_logprobs": [dict(entry.top) for entry in LOGPROBS],
        "text_offset": [0, 3, 5],
    }


def test_streamed_completion_logprob_offsets_continue_across_chunks() -> None:
    events = sse_events(post("completion", logprobs=0, stream=True))
    assert [event["choices"][0]["logprobs"]["text_offset"] for event in events] == [[0], [3], [5]]
    assert [event["choices"][0]["logprobs"]["tokens"] for event in events] == [[t] for t in TOKENS]


# ----- translation to GenerationRequest ---------------------------------------------------------

OPENAI_FIELDS = {"temperature": 0.3, "top_p": 0.9, "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": -1.5}
EXTENSION_FIELDS = {
    "top_k": 40,
    "ignore_eos": True,
    "stop_token_ids": [2, 13],
    "min_p": 0.05,
    "repetition_penalty": 1.2,
    "min_tokens": 3,
    "include_stop_str_in_output": True,
    "skip_special_tokens": False,
}


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_sampling_fields_reach_the_engine_params(endpoint: str) -> None:
    client = FakeModelClient()
    fields = OPENAI_FIELDS | EXTENSION_FIELDS
    post(endpoint, client, **fields)
    params = client.request.params
    assert {name: getattr(params, name) for name in fields} == fields
    assert (params.stop, params.logprobs, params.top_logprobs) == ([], False, 0)


def test_logit_bias_reaches_the_engine_with_integer_token_ids() -> None:
    client = FakeModelClient()
    post("chat", client, logit_bias={"50256": -100, "7": 2.5})
    assert client.request.params.logit_bias == {50256: -100.0, 7: 2.5}


@pytest.mark.parametrize(
    ("logit_bias", "message_part"), [({"x": 1}, "token ids"), ({"5": 101}, "less than or equal to 100")]
)
def test_a_bad_logit_bias_is_400_naming_it(logit_bias: dict[str, float], message_part: str) -> None:
    error = openai_error(post("chat", logit_bias=logit_bias), 400)
    assert error["param"].startswith("logit_bias") and message_part in error["message"]


def test_min_tokens_above_max_tokens_is_400() -> None:
    error = openai_error(post("completion", min_tokens=20, max_tokens=5), 400)
    assert "min_tokens" in error["message"]


def test_continuous_usage_stats_puts_the_usage_so_far_on_every_chunk() -> None:
    events = sse_events(post("completion", stream=True, stream_options={"continuous_usage_stats": True}))
    assert [event["usage"]["completion_tokens"] for event in events] == [1, 2, 3]
    assert all(event["usage"]["prompt_tokens"] == NUM_PROMPT_TOKENS for event in events)
    plain = sse_events(post("completion", stream=True))
    assert all("usage" not in event for event in plain)


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "bc"], ["a", "bc"]), (None, [])])
def test_stop_string_or_list_becomes_a_stop_list(stop: str | list[str] | None, expected: list[str]) -> None:
    client = FakeModelClient()
    post("completion", client, stop=stop)
    assert client.request.params.stop == expected


@pytest.mark.parametrize(
    ("endpoint", "limits", "expected"),
    [
        ("chat", {}, None),
        ("chat", {"max_tokens": 7}, 7),
        ("chat", {"max_completion_tokens": 9}, 9),
        ("chat", {"max_tokens": 7, "max_completion_tokens": 9}, 9),
        ("completion", {}, 16),
        ("completion", {"max_tokens": 100}, 100),
    ],
)
def test_token_limit_defaults_and_max_completion_tokens_wins(
    endpoint: str, limits: dict[str, int], expected: int | None
) -> None:
    client = FakeModelClient()
    post(endpoint, client, **limits)
    assert client.request.max_tokens == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("Say hi", "Say hi"), ([1, 2, 3], [1, 2, 3]), (["Say hi"], "Say hi"), ([[4, 5]], [4, 5])],
)
def test_completion_prompt_forms_are_unwrapped_to_one_prompt(prompt: object, expected: object) -> None:
    client = FakeModelClient()
    post("completion", client, prompt=prompt)
    assert (client.request.prompt, client.request.messages) == (expected, None)


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
@pytest.mark.parametrize(("n", "stream"), [(1, False), (3, True)])
def test_n_and_stream_are_carried(endpoint: str, n: int, stream: bool) -> None:
    client = FakeModelClient()
    post(endpoint, client, n=n, stream=stream)
    assert (client.request.n, client.request.stream) == (n, stream)
    assert client.request.request_id.startswith("cmpl-" if endpoint == "completion" else "chatcmpl-")


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_null_optional_fields_mean_their_defaults(endpoint: str) -> None:
    client = FakeModelClient()
    nulls = dict.fromkeys(["temperature", "top_p", "n", "seed", "stop", "presence_penalty", "best_of", "logprobs"])
    assert post(endpoint, client, **nulls).status_code == 200
    params = client.request.params
    assert (params.temperature, params.top_p, params.seed, params.stop, params.logprobs) == (1.0, 1.0, None, [], False)
    assert client.request.n == 1


def test_best_of_equal_to_n_is_plain_sampling_and_negative_seeds_are_accepted() -> None:
    client = FakeModelClient()
    assert post("completion", client, best_of=2, n=2, seed=-5).status_code == 200
    assert (client.request.n, client.request.params.seed) == (2, -5)


def test_developer_messages_reach_the_chat_template_as_system() -> None:
    client = FakeModelClient()
    post("chat", client, messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert [message.role for message in client.request.messages or []] == ["system", "user"]


def test_chat_text_content_parts_are_joined() -> None:
    client = FakeModelClient()
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    post("chat", client, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}])
    assert [(m.role, m.content) for m in client.request.messages or []] == [
        ("system", "Be brief."),
        ("user", "Hello, world"),
    ]
    assert client.request.prompt is None


# ----- invalid requests -------------------------------------------------------------------------

IMAGE_PART = {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}


CHAT, COMPLETION = BODIES["chat"], BODIES["completion"]


@pytest.mark.parametrize(
    ("body", "param", "message_part"),
    [
        pytest.param(b"{not json", None, "not valid JSON", id="malformed-json"),
        pytest.param(b'[{"model": "tiny"}]', None, "JSON object", id="json-array"),
        pytest.param(
            b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            None,
            "nested too deeply",
            id="deep-json",
        ),
        pytest.param({"prompt": "hi"}, "model", "model", id="missing-model"),
        pytest.param(CHAT | {"temperature": 3}, "temperature", "2", id="temperature-out-of-range"),
        pytest.param(COMPLETION | {"zap": 1}, "zap", "Unrecognized request argument supplied: zap", id="unknown-field"),
        pytest.param(
            CHAT | {"messages": [{"role": "user", "content": [IMAGE_PART]}]},
            "messages.0.content",
            "image_url",
            id="image-content-part",
        ),
        pytest.param(CHAT | {"top_logprobs": 2}, "top_logprobs", "logprobs", id="top-logprobs-alone"),
        pytest.param(COMPLETION | {"prompt": ["a", ""]}, "prompt", "prompt 1 of the batch", id="empty-batch-prompt"),
        pytest.param(COMPLETION | {"prompt": ["a"] * 33}, "prompt", "max_prompts", id="batch-beyond-max-prompts"),
        pytest.param(COMPLETION | {"stream_options": {}}, "stream_options", "stream", id="unstreamed-options"),
        pytest.param(COMPLETION | {"top_k": 10**20}, "top_k", "less than", id="top-k-beyond-int32"),
        pytest.param(COMPLETION | {"stream": "yes"}, "stream", "valid boolean", id="string-for-a-boolean"),
        pytest.param(CHAT | {"logprobs": 1}, "logprobs", "valid boolean", id="number-for-a-boolean"),
    ],
)
def test_invalid_request_is_400_naming_the_field(body: Any, param: str | None, message_part: str) -> None:
    client = FakeModelClient()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    endpoint = "chat" if b"messages" in raw else "completion"
    error = openai_error(call(make_app(client), "POST", PATHS[endpoint], raw=raw), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert message_part in error["message"]
    assert client.requests == []


@pytest.mark.parametrize(
    ("endpoint", "name", "value", "message_part"),
    [
        ("completion", "suffix", "tail", "suffix"),
        ("chat", "function_call", "auto", "tool_choice"),
    ],
)
def test_unsupported_parameter_is_refused_by_name(endpoint: str, name: str, value: Any, message_part: str) -> None:
    client = FakeModelClient()
    error = openai_error(post(endpoint, client, **{name: value}), 400)
    assert (error["param"], error["code"]) == (name, "unsupported_parameter")
    assert message_part in error["message"]
    assert client.requests == []


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_unknown_model_is_404_naming_it_and_the_available_ones(endpoint: str) -> None:
    error = openai_error(post(endpoint, model="gpt-5"), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "gpt-5" in error["message"] and MODEL in error["message"] and "org/other-7b" in error["message"]


def test_unknown_path_is_404_in_openai_shape() -> None:
    openai_error(call(make_app(), "GET", "/v1/embeddings"), 404)


def test_wrong_method_is_405_in_openai_shape() -> None:
    openai_error(call(make_app(), "GET", "/v1/chat/completions"), 405)


# ----- failures of the model client -------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}
ERROR_TYPES[503] = "service_unavailable_error"


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("make_error", "status", "code"),
    [
        pytest.param(lambda: ContextLengthExceededError("too long"), 400, "context_length_exceeded", id="ours-ctx"),
        pytest.param(lambda: ValueError("internal secret /path"), 500, None, id="stray-value-error"),
        pytest.param(
            lambda: BackPressureError(num_queued_requests=5, max_queued_requests=5),
            429,
            "too_many_requests",
            id="backpressure",
        ),
        pytest.param(
            lambda: DeploymentUnavailableError(DeploymentID(name="LLMServer:tiny", app_name="a")),
            503,
            "model_unavailable",
            id="deployment-unavailable",
        ),
        pytest.param(lambda: ReplicaUnavailableError("r1"), 503, "model_unavailable", id="replica-unavailable"),
        pytest.param(lambda: ActorDiedError(), 503, "model_unavailable", id="actor-died"),
        pytest.param(lambda: EngineDeadError("secret detail"), 500, None, id="engine-dead"),
        pytest.param(lambda: RuntimeError("internal secret /path"), 500, None, id="unexpected"),
        pytest.param(
            lambda: RayTaskError(function_name="f", traceback_str="tb", cause=InvalidRequestError("bad", param="x")),
            400,
            None,
            id="ray-task-error",
        ),
    ],
)
def test_client_failure_before_the_first_chunk_maps_to_its_status(
    make_error: Callable[[], BaseException], status: int, code: str | None, endpoint: str, stream: bool
) -> None:
    client = FakeModelClient(error=make_error())
    response = post(endpoint, client, stream=stream)
    error = openai_error(response, status)
    assert (error["type"], error["code"]) == (ERROR_TYPES[status], code)
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in response.headers
    for internal in ("secret", "/path", "RuntimeError", "Traceback"):
        assert internal not in response.text
    assert client.num_closed == 1


def test_ray_task_error_is_unwrapped_to_the_api_error_it_carries() -> None:
    cause = InvalidRequestError("bad", param="x")
    client = FakeModelClient(error=RayTaskError(function_name="f", traceback_str="tb", cause=cause))
    error = openai_error(post("chat", client), 400)
    assert (error["message"], error["param"]) == ("bad", "x")


@pytest.mark.parametrize("prompt_field", ["prompt", "messages"])
def test_engine_context_length_error_becomes_400_naming_the_prompt_field(prompt_field: str) -> None:
    error = invalid_request(
        ContextLengthError("prompt of 9000 tokens exceeds max_model_len 2048"), prompt_field, "response_format"
    )
    assert isinstance(error, ContextLengthExceededError)
    assert (error.status_code, error.code, error.param) == (400, "context_length_exceeded", prompt_field)
    assert "9000" in error.message


def test_other_engine_value_errors_become_plain_400s() -> None:
    error = invalid_request(
        ValueError("prompt token ids must be integers in [0, 512), got 999"), "prompt", "response_format"
    )
    assert type(error) is InvalidRequestError
    assert (error.status_code, error.code, error.param) == (400, None, None)


@pytest.mark.parametrize("structured_field", ["response_format", "structured_outputs", "tools"])
def test_a_grammar_the_engine_cannot_compile_becomes_a_400_naming_the_field_that_carried_it(
    structured_field: str,
) -> None:
    error = invalid_request(
        InvalidGrammarError("invalid json_schema: Invalid type: objectx"), "messages", structured_field
    )
    assert (error.status_code, error.param) == (400, structured_field)
    assert error.message == f"{structured_field}: invalid json_schema: Invalid type: objectx"


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_error_after_the_first_streamed_chunk_is_an_sse_error_event_then_done(endpoint: str) -> None:
    client = FakeModelClient(error=EngineDeadError("secret detail"), num_chunks_before_error=2)
    response = post(endpoint, client, stream=True, stream_options={"include_usage": True})
    events = sse_events(response)
    assert streamed_text(events[:-1]) == "Hello"
    assert set(events[-1]) == {"error"}
    assert events[-1]["error"]["type"] == "server_error"
    assert "secret" not in response.text
    assert client.num_closed == 1


def test_error_after_some_chunks_of_a_whole_response_is_its_status() -> None:
    client = FakeModelClient(error=ReplicaUnavailableError("r1"), num_chunks_before_error=2)
    response = post("completion", client)
    assert openai_error(response, 503)["code"] == "model_unavailable"
    assert client.num_closed == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_model_stream_is_closed_after_a_finished_request(endpoint: str, stream: bool) -> None:
    client = FakeModelClient()
    assert post(endpoint, client, stream=stream).status_code == 200
    assert (len(client.requests), client.num_closed) == (1, 1)


class SlowStartClient(FakeModelClient):
    """A model whose first chunk comes after `delay_s` (a replica starting from zero)."""

    def __init__(self, delay_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        await asyncio.sleep(self.delay_s)
        async for item in super().stream(request):
            yield item


def slow_app(client: FakeModelClient) -> FastAPI:
    return build_openai_app({MODEL: client}, CARDS[:1], keepalive_interval_s=0.05)


def test_a_stream_waiting_for_its_first_token_gets_keepalive_comments_then_the_stream() -> None:
    client = SlowStartClient(0.5)  # ten keep-alive intervals of 0.05 s
    response = call(slow_app(client), "POST", PATHS["completion"], BODIES["completion"] | {"stream": True})
    assert response.status_code == 200
    frames = response.text.split("\n\n")[:-1]
    keepalives = [frame for frame in frames if frame.startswith(":")]
    # Repeated (a slow event loop may merge a few), and only before the data.
    assert len(keepalives) >= 2 and frames[: len(keepalives)] == keepalives
    data = [json.loads(frame.removeprefix("data: ")) for frame in frames[len(keepalives) : -1]]
    assert "".join(event["choices"][0]["text"] for event in data) == TEXT
    assert frames[-1] == "data: [DONE]"
    assert client.num_closed == 1


def test_a_failure_while_waiting_for_the_first_token_is_an_error_event_after_keepalives() -> None:
    unavailable = ModelUnavailableError("The model 'tiny' gave no first token within 1s", retry_after_s=1)
    client = SlowStartClient(0.2, error=unavailable)
    response = call(slow_app(client), "POST", PATHS["chat"], BODIES["chat"] | {"stream": True})
    frames = response.text.split("\n\n")[:-1]
    assert response.status_code == 200 and frames[0].startswith(":")
    error = json.loads(frames[-2].removeprefix("data: "))["error"]
    assert error["type"] == "service_unavailable_error" and frames[-1] == "data: [DONE]"
    assert client.num_closed == 1


def test_a_fast_first_token_gets_no_keepalive_and_a_slow_whole_answer_is_still_json() -> None:
    fast = call(make_app(), "POST", PATHS["completion"], BODIES["completion"] | {"stream": True})
    assert not fast.text.startswith(":")
    whole = call(slow_app(SlowStartClient(0.2)), "POST", PATHS["completion"], BODIES["completion"])
    assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == TEXT


def test_models_list_each_models_replica_state() -> None:
    async def states() -> dict[str, ModelState]:
        return {MODEL: ModelState("scaled_to_zero", 0, 0), "org/other-7b": ModelState("ready", 2, 1)}

    app = build_openai_app({MODEL: FakeModelClient()}, CARDS, states=states)
    listed = {model["id"]: model["status"] for model in call(app, "GET", "/v1/models").json()["data"]}
    assert listed == {
        MODEL: {"state": "scaled_to_zero", "running_replicas": 0, "starting_replicas": 0},
        "org/other-7b": {"state": "ready", "running_replicas": 2, "starting_replicas": 1},
    }
    assert call(app, "GET", f"/v1/models/{MODEL}").json()["status"]["state"] == "scaled_to_zero"


def test_usage_reports_the_prompt_tokens_served_from_the_prefix_cache() -> None:
    cached = [dataclasses.replace(item, num_cached_tokens=4) for item in CHUNKS]
    body = post("completion", FakeModelClient(cached)).json()
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


def test_negative_token_ids_are_refused_before_any_replica_sees_them() -> None:
    client = FakeModelClient()
    response = post("completion", client, prompt=[5, -1])
    assert response.status_code == 400 and "prompt" in response.json()["error"]["message"]
    assert client.requests == []


# ----- /tokenize and /detokenize ----------------------------------------------------------------


class TokenizingClient(FakeModelClient):
    """Tokenizes as one id per character; records what it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenize_requests: list[TokenizeRequest] = []

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        self.tokenize_requests.append(request)
        text = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages or [])
        token_strs = list(text) if request.return_token_strs else None
        return Tokenized([ord(char) for char in text], 2048, token_strs)

    async def detokenize(self, token_ids: list[int]) -> str:
        if any(token_id > 0x10FFFF for token_id in token_ids):
            raise InvalidRequestError("tokens must be token ids in [0, 1114112)", param="tokens")
        # Surrogate code points are no text: a real tokenizer decodes such pieces as U+FFFD.
        return "".join("\ufffd" if 0xD800 <= token_id <= 0xDFFF else chr(token_id) for token_id in token_ids)


def test_tokenize_answers_in_vllms_shape_and_detokenize_round_trips() -> None:
    client = TokenizingClient()
    app = build_openai_app({MODEL: client}, CARDS)
    body = call(app, "POST", "/tokenize", {"model": MODEL, "prompt": "hey", "return_token_strs": True}).json()
    assert body == {"count": 3, "max_model_len": 2048, "tokens": [104, 101, 121], "token_strs": ["h", "e", "y"]}
    assert call(app, "POST", "/detokenize", {"model": MODEL, "tokens": body["tokens"]}).json() == {"prompt": "hey"}


@pytest.mark.parametrize(
    ("fields", "add_special_tokens"),
    [({"prompt": "hi"}, True), ({"messages": [{"role": "developer", "content": "hi"}]}, False)],
)
def test_tokenize_adds_special_tokens_to_a_prompt_and_not_to_a_conversation(
    fields: dict[str, Any], add_special_tokens: bool
) -> None:
    client = TokenizingClient()
    response = call(build_openai_app({MODEL: client}, CARDS), "POST", "/tokenize", {"model": MODEL} | fields)
    assert response.status_code == 200
    [request] = client.tokenize_requests
    assert request.add_special_tokens is add_special_tokens
    if request.messages is not None:
        assert request.messages[0].role == "system" and request.add_generation_prompt


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": MODEL}, 400, None),
        ("/tokenize", {"model": MODEL, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, None),
        ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
        ("/detokenize", {"model": MODEL, "tokens": [-1]}, 400, "tokens.0"),
        ("/detokenize", {"model": MODEL, "tokens": [2**30]}, 400, "tokens"),
        ("/detokenize", {"model": MODEL, "tokens": [1], "zap": 1}, 400, "zap"),
    ],
)
def test_tokenizer_endpoints_refuse_bad_requests_in_openai_shape(
    path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    error = openai_error(call(build_openai_app({MODEL: TokenizingClient()}, CARDS), "POST", path, body), status)
    assert error["param"] == param


def test_openapi_documents_every_request_body_and_its_fields() -> None:
    schema = call(make_app(), "GET", "/openapi.json").json()
    for path, required in [
        ("/v1/completions", {"model", "prompt"}),
        ("/v1/chat/completions", {"model", "messages"}),
        ("/tokenize", {"model"}),
        ("/detokenize", {"model", "tokens"}),
    ]:
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["required"]) == required and body["additionalProperties"] is False
        for field in body["properties"].values():
            for ref in _refs(field):
                assert ref.removeprefix("#/components/schemas/") in schema["components"]["schemas"], ref
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"repetition_penalty", "min_tokens", "logit_bias", "stream_options"} <= set(chat["properties"])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


# ----- batched prompts --------------------------------------------------------------------------


class EchoPromptClient(FakeModelClient):
    """Each choice's text names its prompt and choice: `<prompt>#<choice>`."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.requests.append(request)
        prompt = request.prompt if isinstance(request.prompt, str) else ",".join(map(str, request.prompt or []))
        for index in range(request.n):
            yield GenerationChunk(index, f"{prompt}#{index}", [7], None, "length", len(prompt), 1)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompts", [["ab", "cde", "f"], [[1, 2], [3]]])
def test_a_batch_of_prompts_answers_each_with_n_choices_at_prompt_times_n_plus_choice(
    prompts: list[Any], stream: bool
) -> None:
    client = EchoPromptClient()
    response = call(
        make_app(client),
        "POST",
        PATHS["completion"],
        COMPLETION
        | {"prompt": prompts, "n": 2, "stream": stream, "stream_options": {"include_usage": True} if stream else None},
    )
    texts: dict[int, str] = {}
    if stream:
        events = sse_events(response)
        for event in events:
            for choice in event["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        usage = events[-1]["usage"]
    else:
        body = response.json()
        texts = {choice["index"]: choice["text"] for choice in body["choices"]}
        usage = body["usage"]
    names = [p if isinstance(p, str) else ",".join(map(str, p)) for p in prompts]
    assert texts == {
        position * 2 + choice: f"{name}#{choice}" for position, name in enumerate(names) for choice in (0, 1)
    }
    assert usage["prompt_tokens"] == sum(len(name) for name in names)
    assert usage["completion_tokens"] == 2 * len(prompts)
    assert [request.prompt for request in client.requests] == prompts
    assert len({request.request_id for request in client.requests}) == len(prompts)


def test_a_failing_prompt_of_a_batch_fails_the_request_and_closes_the_others() -> None:
    failing = FakeModelClient([chunk("a", 1)], error=ModelUnavailableError("gone"), num_chunks_before_error=0)
    response = call(make_app(failing), "POST", PATHS["completion"], COMPLETION | {"prompt": ["x", "y"]})
    openai_error(response, 503)
    assert failing.num_closed == 2


# ----- echo -------------------------------------------------------------------------------------


class ScoringClient(FakeModelClient):
    """Sends the prompt's tokens (one per character) and their logprobs in each choice's first chunk."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        self.requests.append(request)
        if request.messages is not None:
            texts = list("".join(message.content for message in request.messages))
        elif isinstance(request.prompt, str):
            texts = list(request.prompt)
        else:
            texts = [f"<{t}>" for t in request.prompt or []]
        scored = [
            TokenLogprob(text, -1.0 - i, [("z", -0.1), (text, -1.0 - i)], token_id=100 + i, top_ids=[99, 100 + i])
            for i, text in enumerate(texts[1:])
        ]
        for index in range(request.n):
            generated = request.max_tokens or 0
            yield GenerationChunk(
                index, "!" * generated, [7] * generated,
                [TokenLogprob("!", -0.5, [("!", -0.5)])] * generated,
                "length", len(texts), generated, prompt_token_texts=texts, prompt_logprobs=scored,
                prompt_text="".join(texts) if request.echo else None,
            )  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_echo_returns_the_prompt_then_the_completion_with_the_prompts_logprobs(stream: bool) -> None:
    client = ScoringClient()
    body = COMPLETION | {"prompt": "abc", "echo": True, "logprobs": 1, "max_tokens": 2, "stream": stream}
    response = call(make_app(client), "POST", PATHS["completion"], body)
    if stream:
        [event] = sse_events(response)
        choice = event["choices"][0]
    else:
        choice = response.json()["choices"][0]
    assert choice["text"] == "abc!!"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["a", "b", "c", "!", "!"]
    assert logprobs["token_logprobs"] == [None, -1.0, -2.0, -0.5, -0.5]
    assert logprobs["top_logprobs"] == [None, {"z": -0.1}, {"z": -0.1}, {"!": -0.5}, {"!": -0.5}]
    assert logprobs["text_offset"] == [0, 1, 2, 3, 4]
    assert client.request.params.prompt_logprobs == 1


def test_max_tokens_zero_with_echo_scores_a_token_id_prompt_without_generating() -> None:
    client = ScoringClient()
    body = COMPLETION | {"prompt": [5, 6], "echo": True, "logprobs": 0, "max_tokens": 0}
    choice = call(make_app(client), "POST", PATHS["completion"], body).json()["choices"][0]
    assert choice["text"] == "<5><6>"
    assert choice["logprobs"]["token_logprobs"] == [None, -1.0]
    assert client.request.max_tokens == 0


def test_max_tokens_zero_without_echo_is_400() -> None:
    error = openai_error(post("completion", max_tokens=0), 400)
    assert "echo" in error["message"] and error["param"] == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_vllms_prompt_logprobs_are_reported_keyed_by_token_id(endpoint: str, stream: bool) -> None:
    client = ScoringClient()
    fields: dict[str, Any] = {"prompt_logprobs": 1, "stream": stream, "max_tokens": 1}
    fields |= {"prompt": "abc"} if endpoint == "completion" else {"messages": [{"role": "user", "content": "abc"}]}
    response = call(make_app(client), "POST", PATHS[endpoint], BODIES[endpoint] | fields)
    if stream:
        events = sse_events(response)
        found = [event.get("prompt_logprobs") or event["choices"][0].get("prompt_logprobs") for event in events]
        reported = [entry for entry in found if entry is not None]
        assert len(reported) == 1
        [prompt_logprobs] = reported
    else:
        body = response.json()
        prompt_logprobs = body["choices"][0]["prompt_logprobs"] if endpoint == "completion" else body["prompt_logprobs"]
    assert client.request.params.prompt_logprobs == 1
    if endpoint == "completion":
        assert prompt_logprobs == [
            None,
            {
                "100": {"logprob": -1.0, "rank": None, "decoded_token": "b"},
                "99": {"logprob": -0.1, "rank": 1, "decoded_token": "z"},
            },
            {
                "101": {"logprob": -2.0, "rank": None, "decoded_token": "c"},
                "99": {"logprob": -0.1, "rank": 1, "decoded_token": "z"},
            },
        ]
    else:
        assert prompt_logprobs[0] is None and len(prompt_logprobs) == 3


def test_echo_without_logprobs_does_not_score_the_prompt() -> None:
    client = ScoringClient()
    body = COMPLETION | {"prompt": [5, 6], "echo": True, "max_tokens": 1}
    choice = call(make_app(client), "POST", PATHS["completion"], body).json()["choices"][0]
    assert choice["text"] == "<5><6>!"
    assert client.request.params.prompt_logprobs is None and client.request.echo


class AdmittingClient(FakeModelClient):
    """Admits `room` prompt streams, then refuses as the Router's admission does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.admission = Admission("tiny")
        self.room = room

    def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:  # type: ignore[override]
        return self.admission.admit(super().stream(request), limit=self.room)


@pytest.mark.parametrize("stream", [False, True])
def test_a_batch_refused_for_one_of_its_prompts_is_a_429_and_holds_nothing(stream: bool) -> None:
    client = AdmittingClient(room=1)
    body = COMPLETION | {"prompt": ["a", "b"], "stream": stream}
    error = openai_error(call(make_app(client), "POST", PATHS["completion"], body), 429)
    assert error["code"] == "too_many_requests"
    gc.collect()
    assert client.admission.held == 0 and client.requests == []  # no prompt reached a replica
