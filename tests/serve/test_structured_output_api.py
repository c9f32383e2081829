"""Structured output and tool calls end to end: the real `openai` client against the random-weight
demo models on Serve. Constrained decoding makes even these write JSON that parses and validates,
strings from a regex or a choice, and tool calls with valid arguments, finishing with "stop" (or
"tool_calls"); bad grammars are 400s naming the field."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest

from tests.serve.test_openai_api import MODELS, client_for

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "^[a-z]{2,8}@[a-z]{2,8}\\.com$"},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "email", "languages"],
    "additionalProperties": False,
}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now"}},
]
MESSAGES = [{"role": "user", "content": "Tell me about someone."}]


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_output_parses_and_validates(multi_model_app: str, model: str) -> None:
    client = client_for(multi_model_app)
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for temperature in (0.0, 1.0):
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, response_format=response_format, max_tokens=200, temperature=temperature
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_streamed_json_schema_output_equals_the_whole_one(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    fields = {"model": "llama-demo", "messages": MESSAGES, "response_format": response_format, "temperature": 0}
    whole = client.chat.completions.create(**fields).choices[0].message.content
    chunks = list(client.chat.completions.create(**fields, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_and_vllm_structured_outputs(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    # Any JSON object leaves strings unbounded: a random-weight model may never close one (the qwen
    # demo does not), so this takes the llama demo, which closes its objects.
    answer = client.chat.completions.create(
        model="llama-demo",
        messages=MESSAGES,
        response_format={"type": "json_object"},
        n=3,
        temperature=1.0,
        seed=3,
        max_tokens=300,
    )
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content or ""), dict)
    regex = r"[A-Z][a-z]{2,6} [0-9]{1,3}"
    completion = client.completions.create(
        model="llama-demo", prompt="Item:", extra_body={"structured_outputs": {"regex": regex}}, max_tokens=30
    )
    assert completion.choices[0].finish_reason == "stop"
    assert re.fullmatch(regex, completion.choices[0].text)
    choices = ["positive", "negative", "neutral"]
    completion = client.completions.create(
        model="llama-demo",
        prompt=["Review: great", "Review: bad"],
        extra_body={"structured_outputs": {"choice": choices}},
    )
    assert all(choice.text in choices and choice.finish_reason == "stop" for choice in completion.choices)


def test_free_and_constrained_requests_share_the_engine(multi_model_app: str) -> None:
    """The free completion's greedy text is the same with constrained requests in flight."""
    client = client_for(multi_model_app)
    fields = {"model": "llama-demo", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    alone = client.completions.create(**fields).choices[0].text
    async_client = openai.AsyncOpenAI(base_url=f"{multi_model_app}/v1", api_key="unused", max_retries=0, timeout=120)

    async def together() -> str:
        constrained = [
            async_client.chat.completions.create(
                model="llama-demo", messages=MESSAGES, response_format={"type": "json_object"}, temperature=1.0, seed=i
            )
            for i in range(4)
        ]
        free, *_ = await asyncio.gather(async_client.completions.create(**fields), *constrained)
        return free.choices[0].text

    assert asyncio.run(together()) == alone


@pytest.mark.parametrize("model", MODELS)
def test_required_tool_choice_calls_a_tool_with_valid_arguments(multi_model_app: str, model: str) -> None:
    client = client_for(multi_model_app)
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name in {"get_weather", "get_time"}
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER_PARAMETERS)
    else:
        assert arguments == {}


def test_named_tool_choice_streams_the_call(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    fields = {
        "model": "qwen-demo",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 120,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**fields).choices[0]
    with client.chat.completions.stream(**fields) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion().choices[0]
    for choice in (whole, streamed):
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    assert streamed.message.tool_calls[0].function.arguments == whole.message.tool_calls[0].function.arguments  # type: ignore[index]


def test_a_conversation_with_tool_results_continues(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    first = client.chat.completions.create(
        model="llama-demo",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
    ).choices[0]
    call = (first.message.tool_calls or [])[0]
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees, sunny"},
    ]
    answer = client.chat.completions.create(model="llama-demo", messages=messages, tools=TOOLS, max_tokens=8)
    assert answer.choices[0].finish_reason in {"length", "stop", "tool_calls"}
    assert answer.usage is not None and answer.usage.prompt_tokens > 50  # the tools and the call were rendered


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
         "response_format"),
        ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}],
          "tool_choice": "required"}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
    ],
)  # fmt: skip
def test_a_bad_grammar_or_tool_choice_is_a_400_naming_the_field(
    multi_model_app: str, fields: dict[str, object], param: str
) -> None:
    response = httpx.post(
        f"{multi_model_app}/v1/chat/completions",
        json={"model": "llama-demo", "messages": MESSAGES} | fields,
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
