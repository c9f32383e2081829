"""OpenAI request bodies -> the GenerationRequest a model's replicas run."""

from __future__ import annotations

from deployments.errors import InvalidRequestError
from deployments.generation import ChatMessage, GenerationRequest
from deployments.ingress.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from engine import SamplingParams

__all__ = ["chat_to_generation", "completion_to_generation"]


def completion_to_generation(body: CompletionRequest, request_id: str) -> GenerationRequest:
    num_top = body.logprobs or 0
    return GenerationRequest(
        request_id=request_id,
        prompt=body.prompt,  # a single prompt after validation
        messages=None,
        params=_sampling_params(body, logprobs=body.logprobs is not None, top_logprobs=num_top),
        max_tokens=body.max_tokens,
        n=body.n,
        stream=body.stream,
        user=body.user,
    )


def chat_to_generation(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt=None,
        messages=[
            ChatMessage(role=_template_role(message.role), content=message.content, name=message.name)
            for message in body.messages
        ],
        params=_sampling_params(body, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0),
        max_tokens=body.completion_token_limit,
        n=body.n,
        stream=body.stream,
        user=body.user,
    )


def _template_role(role: str) -> str:
    """OpenAI's `developer` messages are what chat templates know as `system`."""
    return "system" if role == "developer" else role


def _sampling_params(body: SamplingFields, *, logprobs: bool, top_logprobs: int) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stop_strings,
            stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None
