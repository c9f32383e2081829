"""OpenAI request bodies, validated strictly: an unknown field or an out-of-range value is a 400.

Parameters that would change the output and are not implemented are refused by name rather than
ignored. Extensions beyond OpenAI, as vLLM names and means them: `top_k`, `min_p`,
`repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`, `include_stop_str_in_output`,
`skip_special_tokens`, `prompt_logprobs`, `stream_options.continuous_usage_stats`, and
`structured_outputs` (json, regex, choice, grammar or json_object), beside OpenAI's `response_format`
and, on chat, `tools` with `tool_choice` (deployments/ingress/structured_fields.py).
"""

from __future__ import annotations

import json
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deployments.errors import InvalidRequestError
from deployments.ingress.structured_fields import (
    NamedToolChoice,
    ResponseFormat,
    StructuredOutputsField,
    ToolCallIn,
    ToolChoice,
    ToolDefinition,
)

__all__ = [
    "UNSUPPORTED_PARAMETERS",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "CompletionRequest",
    "DetokenizeBody",
    "TokenizeBody",
    "StreamOptions",
    "parse_body",
]

# Parameters that change the output but are not implemented: refused with this reason.
UNSUPPORTED_PARAMETERS: dict[str, str] = {
    "suffix": "suffix (insertion) is not supported",
    "best_of": "best_of other than n is not supported; use n",
    "functions": "functions is deprecated and not supported: use tools",
    "function_call": "function_call is deprecated and not supported: use tool_choice",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "web_search_options": "web search is not supported",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Parameters this body refuses by name (beyond UNSUPPORTED_PARAMETERS), with the reason.
    refused_parameters: ClassVar[dict[str, str]] = {}


BodyT = TypeVar("BodyT", bound=_Body)


def parse_body(body_type: type[BodyT], raw: bytes) -> BodyT:
    """The validated body; any problem raises InvalidRequestError naming the offending field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequestError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:  # the parser recurses per nesting level
        raise InvalidRequestError("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    # OpenAI accepts null for any optional field, meaning its default.
    data = {name: value for name, value in data.items() if value is not None}
    if "best_of" in data and data["best_of"] == data.get("n", 1):
        del data["best_of"]  # as many candidates as choices: plain sampling
    for name, reason in (UNSUPPORTED_PARAMETERS | body_type.refused_parameters).items():
        if name not in data:
            continue
        if data[name] not in _ABSENT_VALUES:
            raise InvalidRequestError(reason, param=name, code="unsupported_parameter")
        del data[name]  # it asks for nothing
    try:
        return body_type.model_validate(data)
    except ValidationError as error:
        raise _invalid_request(error) from None


# Values of a refused parameter that ask for nothing, as some clients send them.
_ABSENT_VALUES: tuple[object, ...] = (None, False, {}, [], "none", {"type": "text"})


def _invalid_request(error: ValidationError) -> InvalidRequestError:
    first = error.errors(include_url=False)[0]
    location = [str(part) for part in first["loc"] if not _is_union_branch(part)]
    param = ".".join(location) or None
    if first["type"] == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {param}", param=param)
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param)


def _is_union_branch(part: str | int) -> bool:
    """Pydantic names the union member it tried ('str', 'list[int]') in an error's location."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    # vLLM's: every content chunk carries the usage so far.
    continuous_usage_stats: StrictBool = False


class SamplingFields(_Body):
    """Fields shared by chat and completions."""

    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    # OpenAI's: token id (as a string key) -> bias added to its logit.
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] = Field(default_factory=dict)
    user: str | None = None
    # Extensions.
    top_k: int = Field(default=0, ge=0, lt=2**31)
    min_p: Probability = 0.0
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: StrictBool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    # vLLM's: score the prompt, with this many alternatives per prompt token.
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    # Structured output: OpenAI's response_format, or vLLM's structured_outputs (not both).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None

    @field_validator("structured_outputs")
    @classmethod
    def _one_structure(
        cls, structured: StructuredOutputsField | None, info: ValidationInfo
    ) -> StructuredOutputsField | None:
        response_format = info.data.get("response_format")
        if structured is not None and response_format is not None and response_format.type != "text":
            raise ValueError("give either response_format or structured_outputs, not both")
        return structured

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, logit_bias: dict[str, float]) -> dict[str, float]:
        token_ids = set()
        for key in logit_bias:
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
            if int(key) in token_ids:
                raise ValueError(f"token id {int(key)} is given twice")
            token_ids.add(int(key))
        return logit_bias

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return options

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    refused_parameters: ClassVar[dict[str, str]] = {
        name: f"{name}: tool calling is only supported on /v1/chat/completions"
        for name in ("tools", "tool_choice", "parallel_tool_calls")
    }

    # Text, token ids, or a batch: a list of texts or of token-id lists (each prompt gets `n`
    # choices; choice index = prompt position x n + choice).
    prompt: str | list[Annotated[int, Field(ge=0)]] | list[str] | list[list[Annotated[int, Field(ge=0)]]]
    # Answer each choice with its prompt followed by the completion (before max_tokens: its check reads it).
    echo: StrictBool = False
    # 0 only with echo: score the prompt without generating.
    max_tokens: int | None = Field(default=16, ge=0)
    # Chosen token's logprob plus this many alternatives per position (with echo, the prompt's too).
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("max_tokens")
    @classmethod
    def _zero_only_with_echo(cls, max_tokens: int | None, info: ValidationInfo) -> int | None:
        if max_tokens == 0 and not info.data.get("echo"):
            raise ValueError("0 generates nothing: it needs echo (to score the prompt)")
        return max_tokens

    @field_validator("prompt")
    @classmethod
    def _non_empty(
        cls, prompt: str | list[int] | list[str] | list[list[int]]
    ) -> str | list[int] | list[str] | list[list[int]]:
        if not prompt:
            raise ValueError("must not be empty")
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
            for index, one in enumerate(prompt):
                if not one:
                    raise ValueError(f"prompt {index} of the batch must not be empty")
        return prompt

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch: one prompt unless `prompt` is a list of texts or of token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
            return list(prompt)  # type: ignore[arg-type]
        return [prompt]  # type: ignore[list-item]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # A string, or a list of text parts ({"type": "text", "text": ...}), joined. None only for an
    # assistant turn that called tools.
    content: str | None = None
    name: str | None = None
    # An assistant turn's tool calls, and a tool message's answer to one of them.
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _fits_role(self) -> ChatMessageIn:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant message with tool_calls may omit it)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is None) == (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: object) -> object:
        if not isinstance(content, list):
            return content
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"only text content parts are supported, got {kind!r}")
            texts.append(part["text"])
        return "".join(texts)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Functions the model may call: they go to the chat template, and calls in the output come
    # back as tool_calls. tool_choice: "auto" (default with tools) lets the model decide, "none"
    # parses no calls, "required" and a named function force calls by grammar.
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    # With "required": one call or several (a named function is called once).
    parallel_tool_calls: StrictBool | None = None

    @field_validator("tools")
    @classmethod
    def _distinct_names(cls, tools: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in tools or []]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"function names must be distinct, {duplicates[0]!r} is given twice")
        return tools or None

    @field_validator("tool_choice")
    @classmethod
    def _choice_of_the_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if choice is None or choice == "none":
            return choice
        tools: list[ToolDefinition] | None = info.data.get("tools")
        if not tools:
            raise ValueError(f"{_choice_text(choice)} needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"names function {choice.function.name!r}, which is not in tools")
        forced = choice == "required" or isinstance(choice, NamedToolChoice)
        response_format = info.data.get("response_format")
        formatted = info.data.get("structured_outputs") is not None or (
            response_format is not None and response_format.type != "text"
        )
        if forced and formatted:
            raise ValueError(f"{_choice_text(choice)} cannot be combined with response_format or structured_outputs")
        return choice

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """What the request asks of its tools: "auto" with tools unless it says otherwise, "none" without."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, top_logprobs: int | None, info: ValidationInfo) -> int | None:
        if top_logprobs and not info.data.get("logprobs"):
            raise ValueError("requires logprobs to be true")
        return top_logprobs

    @property
    def completion_token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _choice_text(choice: ToolChoice) -> str:
    return f"function {choice.function.name!r}" if isinstance(choice, NamedToolChoice) else repr(choice)


class TokenizeBody(_Body):
    """POST /tokenize (vLLM's shape): `prompt` text, or `messages` rendered with the chat template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1)
    # With messages: the functions the chat template describes, as in a chat request.
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)

    @field_validator("tools")
    @classmethod
    def _tools_with_messages(
        cls, tools: list[ToolDefinition] | None, info: ValidationInfo
    ) -> list[ToolDefinition] | None:
        if tools and info.data.get("messages") is None:
            raise ValueError("only with messages (the chat template renders them)")
        return tools

    # Default: True for a prompt (its BOS), False for messages (the template writes its own).
    add_special_tokens: StrictBool | None = None
    add_generation_prompt: StrictBool = True
    return_token_strs: StrictBool = False

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeBody:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


class DetokenizeBody(_Body):
    """POST /detokenize (vLLM's shape)."""

    model: str
    tokens: list[Annotated[int, Field(ge=0)]]
