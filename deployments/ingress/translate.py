"""OpenAI request bodies -> the GenerationRequest a model's replicas run."""

from __future__ import annotations

import dataclasses

from deployments.errors import InvalidRequestError
from deployments.generation import ChatMessage, GenerationRequest, TokenizeRequest
from deployments.ingress.protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    SamplingFields,
    TokenizeBody,
)
from engine import SamplingParams

__all__ = ["chat_to_generation", "completion_to_generations", "tokenize_request"]


def completion_to_generations(body: CompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per prompt of the batch (`request_id` alone for a single prompt,
    `{request_id}-p{i}` for prompt i of several), each with the body's `n` choices."""
    num_top = body.logprobs or 0
    params = _sampling_params(body, body.max_tokens, logprobs=body.logprobs is not None, top_logprobs=num_top)
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
        )
        for index, prompt in enumerate(prompts)
    ]


def chat_to_generation(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt=None,
        messages=_chat_messages(body.messages),
        params=_sampling_params(
            body, body.completion_token_limit, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0
        ),
        max_tokens=body.completion_token_limit,
        n=body.n,
        stream=body.stream,
        user=body.user,
    )


def tokenize_request(body: TokenizeBody) -> TokenizeRequest:
    is_chat = body.messages is not None
    return TokenizeRequest(
        prompt=body.prompt,
        messages=_chat_messages(body.messages) if body.messages is not None else None,
        add_special_tokens=body.add_special_tokens if body.add_special_tokens is not None else not is_chat,
        add_generation_prompt=body.add_generation_prompt,
        return_token_strs=body.return_token_strs,
    )


def _chat_messages(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    return [
        ChatMessage(role=_template_role(message.role), content=message.content, name=message.name)
        for message in messages
    ]


def _template_role(role: str) -> str:
    """OpenAI's `developer` messages are what chat templates know as `system`."""
    return "system" if role == "developer" else role


def _sampling_params(
    body: SamplingFields, max_tokens: int | None, *, logprobs: bool, top_logprobs: int
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
        )
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None
