"""The plain data that travels between the Router and a model's LLMServer replicas.

The Router turns an OpenAI request into one `GenerationRequest`; the replica answers with a stream
of `GenerationChunk`s, one or more per choice, the last of each choice carrying its finish reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine import SamplingParams

__all__ = ["ChatMessage", "GenerationChunk", "GenerationRequest", "TokenLogprob", "TokenizeRequest", "Tokenized"]


@dataclass
class ChatMessage:
    role: str
    content: str
    # The participant's name, handed to the chat template (templates that know it render it).
    name: str | None = None
    # An assistant turn's tool calls, as chat templates read them ({"id", "type", "function":
    # {"name", "arguments"}}, arguments a dict when they are a JSON object); a tool message's
    # answer names the call it answers.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass
class GenerationRequest:
    # Unique per HTTP request; choice i runs in the engine as f"{request_id}-{i}".
    request_id: str
    # Completions: text or token ids, as given. Chat: None (see `messages`).
    prompt: str | list[int] | None
    # Chat: the conversation, rendered with the model's chat template. Completions: None.
    messages: list[ChatMessage] | None
    # Sampling for every choice. Its max_tokens is replaced by the replica (see `max_tokens`).
    params: SamplingParams
    # Most tokens per choice; None means whatever the model's context leaves after the prompt.
    max_tokens: int | None
    # Choices to generate from the one prompt (they share its KV blocks through the prefix cache).
    n: int = 1
    # False: the replica sends each choice once, whole, when it finishes.
    stream: bool = True
    # The client's end-user id (OpenAI's `user`), named in the logs of a request that failed.
    user: str | None = None
    # Completions' echo: each choice's first chunk carries the prompt's text (`prompt_text`).
    echo: bool = False
    # The tenant whose key sent it ("" without auth) and its scheduling weight: the replica's
    # engine shares its steps fairly across tenants by these.
    tenant: str = ""
    tenant_weight: float = 1.0
    # Chat: the functions the model may call, as OpenAI's `tools` entries, for the chat template.
    tools: list[dict[str, Any]] | None = None
    # The request field that carried params.structured_output, named by a refusal of its grammar.
    structured_param: str = "response_format"

    @property
    def prompt_param(self) -> Literal["messages", "prompt"]:
        """The request field a prompt problem is reported against."""
        return "messages" if self.messages is not None else "prompt"


@dataclass
class TokenLogprob:
    # The token as text (a lone piece of a multi-byte character shows as U+FFFD).
    token: str
    logprob: float
    # The most likely tokens at this position, most likely first: (text, logprob).
    top: list[tuple[str, float]] = field(default_factory=list)
    # The token's id and its alternatives' ids (aligned with `top`); filled for prompt logprobs,
    # whose vLLM shape is keyed by token id.
    token_id: int | None = None
    top_ids: list[int] = field(default_factory=list)


@dataclass
class GenerationChunk:
    # Which choice this belongs to, in [0, n).
    index: int
    # Text and token ids new in this chunk.
    text: str
    token_ids: list[int]
    # One entry per token in `token_ids` when logprobs were asked for, else None.
    logprobs: list[TokenLogprob] | None
    # "stop" | "length" on a choice's last chunk, else None.
    finish_reason: str | None
    # Tokens in the prompt, and tokens this choice has generated so far (for usage).
    num_prompt_tokens: int
    num_generated_tokens: int
    # Prompt tokens the replica's prefix cache supplied for this choice.
    num_cached_tokens: int = 0
    # With SamplingParams.prompt_logprobs, in the first chunk of each choice: the text of every
    # prompt token, and for each after the first its logprob given those before it (and the top
    # alternatives), so len(prompt_logprobs) == len(prompt_token_texts) - 1.
    prompt_token_texts: list[str] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    # With GenerationRequest.echo, in the first chunk of each choice: the prompt decoded whole.
    prompt_text: str | None = None


@dataclass
class TokenizeRequest:
    """POST /tokenize, for one model's tokenizer: a text, or a conversation rendered with the chat
    template (exactly one of the two)."""

    prompt: str | None
    messages: list[ChatMessage] | None
    # Add the tokenizer's special tokens (BOS) when encoding the text (or the rendered conversation).
    add_special_tokens: bool
    # Chat: end the rendered conversation with the assistant's turn header.
    add_generation_prompt: bool = True
    # Also return each token as the tokenizer spells it.
    return_token_strs: bool = False
    # With messages: the functions the chat template describes.
    tools: list[dict[str, Any]] | None = None


@dataclass
class Tokenized:
    """What /tokenize answers."""

    token_ids: list[int]
    # The most tokens (prompt + completion) one request of this model may have.
    max_model_len: int
    # Each token as the tokenizer spells it; None unless asked for.
    token_strs: list[str] | None = None
