"""Tool calls: the grammar that makes a model call a function (tool_choice "required" or named),
and the parsers that find the calls in what a model wrote, whole or as it streams.

One format, Hermes's, which Qwen 2, 2.5 and 3, Hermes and many fine-tunes are trained on and the
demo model's chat template describes: each call is a block

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A block whose JSON does not parse, names no function of the request or has arguments that are
not an object stays in the content as text. The content is the text outside the calls (text before
and after a call joined by one newline, the whitespace around calls dropped); with calls and
nothing else it is null, as OpenAI answers. Calls parsed in "auto" mode are not checked against
their function's schema (only forced calls are guaranteed valid), as vLLM's parsers do not.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from deployments.ingress.structured_fields import ToolDefinition
from engine import StructuredOutput
from engine.structured.spec import JSON_LAYOUT

__all__ = [
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "ParsedToolCall",
    "ToolCallStream",
    "parse_tool_calls",
    "tool_call_grammar",
]

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"

# The arguments of a function that declares no parameters: an empty object.
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ParsedToolCall:
    id: str
    name: str
    # The arguments as JSON text (OpenAI's shape).
    arguments: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def tool_call_grammar(tools: list[ToolDefinition], name: str | None, parallel: bool) -> StructuredOutput:
    """Output that is nothing but tool calls: of function `name` (once), or of any of `tools`
    (once, or one or more when `parallel`), each call's arguments valid against its schema."""
    functions = [tool.function for tool in tools if name is None or tool.function.name == name]
    call_schemas = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function.name},
                "arguments": _NO_PARAMETERS if function.parameters is None else function.parameters,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in functions
    ]
    schema = (call_schemas[0] if len(call_schemas) == 1 else {"anyOf": call_schemas}) | {"x-guidance": JSON_LAYOUT}
    calls = 'call ("\\n" call)*' if parallel and name is None else "call"
    lark = (
        f"start: {calls}\n"
        f"call: {json.dumps(TOOL_CALL_START + chr(10))} arguments {json.dumps(chr(10) + TOOL_CALL_END)}\n"
        f"arguments: %json {json.dumps(schema)}\n"
    )
    return StructuredOutput.grammar(lark)


def parse_tool_calls(text: str, function_names: set[str]) -> tuple[str | None, list[ParsedToolCall]]:
    """A whole output's content (None when only calls) and its calls of `function_names`."""
    stream = ToolCallStream(function_names)
    content, calls = stream.feed(text)
    content += stream.finish()
    if calls and not content.strip():
        return None, calls
    return content, calls


class ToolCallStream:
    """Splits a streamed output into content deltas and complete tool calls.

    Text that may be the start of a call block is held back until it is known not to be; a call
    is released whole once its block closes. Whitespace between calls (and before the first) is
    not content.
    """

    def __init__(self, function_names: set[str]) -> None:
        self._names = function_names
        # Text not yet released: a possible or open call block.
        self._pending = ""
        # Whitespace after the last released content: released if more content follows, dropped
        # if a call does.
        self._whitespace = ""
        # Whitespace right after a call is not content either.
        self._after_call = False
        self._released_content = False
        self.num_calls = 0

    def feed(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        """The content released and the calls completed by `text`."""
        self._pending += text
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        while True:
            start = self._pending.find(TOOL_CALL_START)
            if start < 0:
                keep = _partial_start_length(self._pending)
                content.append(self._content(self._pending[: len(self._pending) - keep]))
                self._pending = self._pending[len(self._pending) - keep :]
                break
            end = self._pending.find(TOOL_CALL_END, start)
            if end < 0:
                content.append(self._content(self._pending[:start]))
                self._pending = self._pending[start:]
                break
            before, block = self._pending[:start], self._pending[start : end + len(TOOL_CALL_END)]
            self._pending = self._pending[end + len(TOOL_CALL_END) :]
            content.append(self._content(before))
            call = self._parse(block[len(TOOL_CALL_START) : -len(TOOL_CALL_END)])
            if call is None:
                content.append(self._content(block))
            else:
                self._whitespace, self._after_call = "", True
                calls.append(call)
        return "".join(content), calls

    def finish(self) -> str:
        """The content still held back at the end of the output (an unclosed block is text);
        trailing whitespace stays only in an output without calls."""
        rest, self._pending = self._content(self._pending), ""
        return rest + (self._whitespace if not self.num_calls else "")

    def _content(self, text: str) -> str:
        if self._after_call:
            text = text.lstrip()
        stripped = text.rstrip()
        if not stripped:
            self._whitespace += text
            return ""
        separator = "\n" if self._after_call and self._released_content else ""
        released = separator + self._whitespace + stripped
        self._whitespace, self._after_call, self._released_content = text[len(stripped) :], False, True
        return released

    def _parse(self, block: str) -> ParsedToolCall | None:
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict):
            return None
        name, arguments = call.get("name"), call.get("arguments", call.get("parameters", {}))
        if name not in self._names or not isinstance(arguments, dict):
            return None
        self.num_calls += 1
        return ParsedToolCall(f"call_{uuid.uuid4().hex[:24]}", name, json.dumps(arguments, ensure_ascii=False))


def _partial_start_length(text: str) -> int:
    """The length of the longest end of `text` that begins TOOL_CALL_START (held back)."""
    for length in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-length:]):
            return length
    return 0
