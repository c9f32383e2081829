"""Request fields that constrain what a model writes: OpenAI's `response_format`, `tools` and
`tool_choice` (and the tool calls of earlier assistant turns), and vLLM's `structured_outputs`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FunctionCallIn",
    "FunctionDefinition",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "StructuredOutputsField",
    "ToolCallIn",
    "ToolChoice",
    "ToolDefinition",
]

# OpenAI's rule for function and response-format names.
Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaFormat(_Strict):
    name: Name
    description: str | None = None
    # `schema` would shadow a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    # Constrained decoding enforces the schema whatever `strict` says.
    strict: bool | None = None


class _TextFormat(_Strict):
    type: Literal["text"]


class _JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class _JsonSchemaResponseFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[_TextFormat | _JsonObjectFormat | _JsonSchemaResponseFormat, Field(discriminator="type")]


class StructuredOutputsField(_Strict):
    """vLLM's `structured_outputs`: exactly one of the constraints."""

    json_schema: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, min_length=1)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    # A Lark grammar (llguidance's dialect).
    grammar: str | None = Field(default=None, min_length=1)
    json_object: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputsField:
        given = [name for name in ("json_schema", "regex", "choice", "grammar") if getattr(self, name) is not None]
        if self.json_object:
            given.append("json_object")
        if len(given) != 1:
            raise ValueError(f"give exactly one of json, regex, choice, grammar and json_object, got {len(given)}")
        return self


class FunctionDefinition(_Strict):
    name: Name
    description: str | None = None
    # The arguments' JSON schema; none means a function without arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class _FunctionName(_Strict):
    name: Name


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallIn(_Strict):
    name: str
    # JSON text, as OpenAI sends it.
    arguments: str


class ToolCallIn(_Strict):
    """A tool call of an earlier assistant turn, as the client sends it back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn
