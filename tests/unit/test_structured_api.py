"""response_format, structured_outputs, tools and tool_choice on the Router's app (a scripted model
behind it): what reaches the engine, the 400s, and tool calls parsed from what the model wrote,
whole and streamed, as the real `openai` SDK reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from transformers import AutoTokenizer

from deployments.generation import GenerationChunk
from deployments.ingress.structured_fields import ToolDefinition
from deployments.ingress.tool_calls import ToolCallStream, parse_tool_calls, tool_call_grammar
from engine import StructuredOutput
from engine.structured.compiler import GrammarCompiler
from tests.unit.test_openai_app import COMPLETION, FakeModelClient, call, make_app, openai_error, post, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def scripted(text: str, piece: int = 5, finish: str = "stop") -> list[GenerationChunk]:
    """The text in chunks of `piece` characters, the last one finishing the choice."""
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
    return [
        GenerationChunk(0, p, [7], None, finish if i == len(pieces) - 1 else None, 5, i + 1)
        for i, p in enumerate(pieces)
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, StructuredOutput.json_object()),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "integer"}}}},
            StructuredOutput.json_schema({"type": "integer"}),
        ),
        ({"response_format": {"type": "text"}}, None),
        ({"structured_outputs": {"regex": "[a-z]+"}}, StructuredOutput.regex("[a-z]+")),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, StructuredOutput.choice(["yes", "no"])),
        ({"structured_outputs": {"json": '{"type": "boolean"}'}}, StructuredOutput.json_schema({"type": "boolean"})),
        ({"structured_outputs": {"grammar": 'start: "a"'}}, StructuredOutput.grammar('start: "a"')),
        ({"structured_outputs": {"json_object": True}}, StructuredOutput.json_object()),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_structured_output_fields_reach_the_engine(endpoint: str, fields: dict[str, Any], expected: object) -> None:
    client = FakeModelClient()
    assert post(endpoint, client, **fields).status_code == 200
    assert client.request.params.structured_output == expected
    carried = "structured_outputs" if "structured_outputs" in fields else "response_format"
    assert client.request.structured_param == carried


def test_tools_go_to_the_template_and_forced_choices_become_a_grammar() -> None:
    client = FakeModelClient()
    assert post("chat", client, tools=[WEATHER, TIME]).status_code == 200
    assert client.request.tools == [WEATHER, TIME]
    assert client.request.params.structured_output is None  # "auto": the model decides
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        client = FakeModelClient()
        assert post("chat", client, tools=[WEATHER, TIME], tool_choice=choice).status_code == 200
        grammar = client.request.params.structured_output
        assert grammar is not None and grammar.kind == "grammar" and "get_time" in grammar.definition
        assert ("get_weather" in grammar.definition) == (choice == "required")
        assert client.request.structured_param == "tools"


@pytest.mark.parametrize(
    ("fields", "param", "message_part"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "nope",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "given twice"),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "cannot be combined",
        ),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
            "not both",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs", "not valid JSON"),
        ({"response_format": {"type": "yaml"}}, "response_format", "yaml"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.json_schema", "Field required"),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages.0", "tool_call_id"),
        ({"messages": [{"role": "user"}]}, "messages.0", "content is required"),
        (
            {"response_format": {"type": "json_object"}, "min_tokens": 3},
            None,
            "min_tokens cannot be combined with structured_output",
        ),
        ({"functions": [{"name": "f"}]}, "functions", "use tools"),
    ],
)
def test_bad_structured_fields_are_400s_naming_the_field(
    fields: dict[str, Any], param: str | None, message_part: str
) -> None:
    client = FakeModelClient()
    error = openai_error(post("chat", client, **fields), 400)
    assert error["param"] == param, error
    assert message_part in error["message"]
    assert client.requests == []


def test_earlier_tool_calls_and_answers_reach_the_template() -> None:
    client = FakeModelClient()
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert post("chat", client, messages=messages, tools=[WEATHER]).status_code == 200
    assistant, tool = client.request.messages[1:]  # type: ignore[index]
    assert assistant.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "sunny")


def test_a_tool_call_in_the_output_is_answered_as_tool_calls() -> None:
    client = FakeModelClient(scripted("Checking.\n" + CALL_TEXT))
    response = post("chat", client, tools=[WEATHER, TIME])
    completion = ChatCompletion.model_validate(response.json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert (tool_call.function.name, json.loads(tool_call.function.arguments)) == ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("piece", [1, 4, 11, 200])
def test_a_streamed_tool_call_accumulates_in_the_sdk_as_the_whole_answer(piece: int) -> None:
    text = CALL_TEXT + "\n" + CALL_TEXT.replace("Paris", "Oslo")
    client = FakeModelClient(scripted(text, piece))
    events = sse_events(post("chat", client, tools=[WEATHER], stream=True))
    state = ChatCompletionStreamState()
    for event in events:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = choice.message.tool_calls or []
    assert [json.loads(call.function.arguments)["city"] for call in calls] == ["Paris", "Oslo"]
    assert len({call.id for call in calls}) == 2


def test_tool_choice_none_and_plain_chat_leave_the_text_alone() -> None:
    for fields in ({"tools": [WEATHER], "tool_choice": "none"}, {}):
        client = FakeModelClient(scripted(CALL_TEXT))
        choice = post("chat", client, **fields).json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (CALL_TEXT, "stop")
        assert "tool_calls" not in choice["message"]


def test_an_unknown_function_or_broken_block_stays_content() -> None:
    names = {"get_weather"}
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    unknown = CALL_TEXT.replace("get_weather", "launch")
    for text in (broken, unknown, "<tool_call>\n{unclosed", "no calls at all "):
        assert parse_tool_calls(text, names) == (text, [])
    content, calls = parse_tool_calls(f"{CALL_TEXT}\n{unknown}", names)
    assert content == unknown and [call.name for call in calls] == ["get_weather"]


@pytest.mark.parametrize("piece", [1, 3, 8])
def test_the_stream_parser_releases_the_same_content_as_the_whole_parse(piece: int) -> None:
    text = "Let me look <tool this up.\n" + CALL_TEXT + "\nDone: <tool_call>\n{bad}\n</tool_call> ok"
    whole_content, whole_calls = parse_tool_calls(text, {"get_weather"})
    stream = ToolCallStream({"get_weather"})
    released, calls = [], []
    for i in range(0, len(text), piece):
        content, new_calls = stream.feed(text[i : i + piece])
        released.append(content)
        calls += new_calls
    released.append(stream.finish())
    assert "".join(released) == whole_content == "Let me look <tool this up.\nDone: <tool_call>\n{bad}\n</tool_call> ok"
    assert [c.arguments for c in calls] == [c.arguments for c in whole_calls] == ['{"city": "Paris"}']


def test_completions_refuse_tools_by_name_and_accept_empty_ones() -> None:
    error = openai_error(call(make_app(), "POST", "/v1/completions", COMPLETION | {"tools": [WEATHER]}), 400)
    assert (error["param"], error["code"]) == ("tools", "unsupported_parameter")
    assert "/v1/chat/completions" in error["message"]
    for empty in ({"tools": []}, {"tool_choice": "none"}, {"parallel_tool_calls": False}):
        assert call(make_app(), "POST", "/v1/completions", COMPLETION | empty).status_code == 200, empty
    assert post("chat", functions=[]).status_code == 200  # a deprecated field that asks for nothing


@pytest.mark.parametrize(
    ("name", "parallel", "num_calls_allowed"), [(None, True, 2), (None, False, 1), ("get_weather", True, 1)]
)
def test_the_tool_grammar_takes_valid_calls_only(
    llama_dir: Path, name: str | None, parallel: bool, num_calls_allowed: int
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tools = [ToolDefinition.model_validate(tool) for tool in (WEATHER, TIME)]
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {2})
    spec = tool_call_grammar(tools, name, parallel)

    def accepts(text: str) -> bool:
        matcher = compiler.matcher(spec).result()
        # The text, then the end of sequence, which the grammar takes only where the output may end.
        return all(matcher.accept(token_id) for token_id in [*tokenizer.encode(text), 2]) and matcher.is_finished

    two_calls = CALL_TEXT + "\n" + CALL_TEXT.replace("Paris", "Oslo")
    assert accepts(CALL_TEXT)
    assert accepts(two_calls) == (num_calls_allowed == 2)
    assert not accepts(CALL_TEXT.replace('"city"', '"town"'))  # arguments outside the function's schema
    assert accepts('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>') == (name is None)
