"""OpenAI request bodies -> the GenerationRequest a model's replicas run."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from deployments.errors import InvalidRequestError
from deployments.generation import ChatMessage, GenerationRequest, TokenizeRequest
from deployments.ingress.protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    SamplingFields,
    TokenizeBody,
)
from deployments.ingress.structured_fields import NamedToolChoice, StructuredOutputsField, ToolDefinition
from deployments.ingress.tool_calls import tool_call_grammar
from engine import SamplingParams, StructuredOutput

__all__ = ["chat_to_generation", "completion_to_generations", "tokenize_request"]


def completion_to_generations(body: CompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per prompt of the batch (`request_id` alone for a single prompt,
    `{request_id}-p{i}` for prompt i of several), each with the body's `n` choices."""
    num_top = body.logprobs or 0
    structured, structured_param = _structured_output(body)
    params = _sampling_params(
        body, body.max_tokens, logprobs=body.logprobs is not None, top_logprobs=num_top, structured=structured
    )
    if body.echo and body.logprobs is not None:
        # Echo with logprobs lists the prompt tokens' logprobs too: score the prompt.
        params = dataclasses.replace(params, prompt_logprobs=max(num_top, body.prompt_logprobs or 0))
    prompts = body.prompts
    return [
        GenerationRequest(
            request_id=request_id if len(prompts) == 1 else f"{request_id}-p{index}",
            prompt=prompt,
            messages=None,
            params=params,
            max_tokens=body.max_tokens,
            n=body.n,
            stream=body.stream,
            user=body.user,
            echo=body.echo,
            structured_param=structured_param,
        )
        for index, prompt in enumerate(prompts)
    ]


def chat_to_generation(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    choice = body.effective_tool_choice
    if body.tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        structured: StructuredOutput | None = tool_call_grammar(body.tools, name, body.parallel_tool_calls is not False)
        structured_param = "tools"
    else:
        structured, structured_param = _structured_output(body)
    return GenerationRequest(
        request_id=request_id,
        prompt=None,
        messages=_chat_messages(body.messages),
        params=_sampling_params(
            body,
            body.completion_token_limit,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            structured=structured,
        ),
        max_tokens=body.completion_token_limit,
        n=body.n,
        stream=body.stream,
        user=body.user,
        tools=_template_tools(body.tools),
        structured_param=structured_param,
    )


def _structured_output(body: SamplingFields) -> tuple[StructuredOutput | None, str]:
    """The body's response_format or structured_outputs as the engine's, and the field it came from."""
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        return StructuredOutput.json_object(), "response_format"
    if response_format is not None and response_format.type == "json_schema":
        return StructuredOutput.json_schema(response_format.json_schema.json_schema), "response_format"
    if body.structured_outputs is not None:
        return _vllm_structured_output(body.structured_outputs), "structured_outputs"
    return None, "response_format"


def _vllm_structured_output(field: StructuredOutputsField) -> StructuredOutput:
    if field.regex is not None:
        return StructuredOutput.regex(field.regex)
    if field.choice is not None:
        return StructuredOutput.choice(field.choice)
    if field.grammar is not None:
        return StructuredOutput.grammar(field.grammar)
    if field.json_schema is None:
        return StructuredOutput.json_object()
    schema = field.json_schema
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(
                f"structured_outputs.json is not valid JSON: {error}", param="structured_outputs"
            ) from None
    try:
        return StructuredOutput.json_schema(schema)
    except ValueError as error:
        raise InvalidRequestError(f"structured_outputs.json: {error}", param="structured_outputs") from None


def _template_tools(tools: list[ToolDefinition] | None) -> list[dict[str, Any]] | None:
    """OpenAI's tool entries as chat templates read them (unset fields left out)."""
    if not tools:
        return None
    return [tool.model_dump(exclude_none=True, by_alias=True) for tool in tools]


def tokenize_request(body: TokenizeBody) -> TokenizeRequest:
    is_chat = body.messages is not None
    return TokenizeRequest(
        prompt=body.prompt,
        messages=_chat_messages(body.messages) if body.messages is not None else None,
        add_special_tokens=body.add_special_tokens if body.add_special_tokens is not None else not is_chat,
        add_generation_prompt=body.add_generation_prompt,
        return_token_strs=body.return_token_strs,
        tools=_template_tools(body.tools),
    )


def _chat_messages(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    return [
        ChatMessage(
            role=_template_role(message.role),
            content=message.content or "",
            name=message.name,
            tool_calls=_template_tool_calls(message),
            tool_call_id=message.tool_call_id,
        )
        for message in messages
    ]


def _template_tool_calls(message: ChatMessageIn) -> list[dict[str, Any]] | None:
    """An assistant turn's calls with their arguments parsed (chat templates write them as JSON
    themselves); arguments that are not a JSON object stay the text they were."""
    if not message.tool_calls:
        return None
    calls = []
    for call in message.tool_calls:
        try:
            arguments: Any = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            arguments = call.function.arguments
        if not isinstance(arguments, dict):
            arguments = call.function.arguments
        calls.append(
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
        )
    return calls


def _template_role(role: str) -> str:
    """OpenAI's `developer` messages are what chat templates know as `system`."""
    return "system" if role == "developer" else role


def _sampling_params(
    body: SamplingFields,
    max_tokens: int | None,
    *,
    logprobs: bool,
    top_logprobs: int,
    structured: StructuredOutput | None,
) -> SamplingParams:
    """The engine's params; without a max_tokens the replica sets it from the room the prompt leaves
    (and checks min_tokens against it), so a placeholder that min_tokens fits stands in."""
    try:
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else max(1, body.min_tokens),
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stop_strings,
            stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            logit_bias={int(token_id): bias for token_id, bias in body.logit_bias.items()},
            min_p=body.min_p,
            min_tokens=body.min_tokens,
            include_stop_str_in_output=body.include_stop_str_in_output,
            prompt_logprobs=body.prompt_logprobs,
            skip_special_tokens=body.skip_special_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            structured_output=structured,
        )
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None
