"""Prompts as token ids: chat messages through the model's chat template, text through its tokenizer."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from deployments.errors import ContextLengthExceededError, InvalidRequestError
from deployments.generation import ChatMessage, GenerationRequest, Tokenized, TokenizeRequest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PromptBuilder"]


class PromptBuilder:
    """Tokenizes requests for one model and decides how many tokens each may generate."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, context_len: int, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.model_name = model_name
        self.token_text = lru_cache(maxsize=65536)(self._decode_one)

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            return self._chat_token_ids(request)
        if isinstance(request.prompt, list):
            return request.prompt  # the engine checks the ids against the vocabulary
        if self.tokenizer is None:
            raise InvalidRequestError(
                f"model {self.model_name!r} has no tokenizer: send the prompt as token ids", param="prompt"
            )
        assert request.prompt is not None
        return self.tokenizer.encode(request.prompt)

    def max_tokens(self, request: GenerationRequest, num_prompt_tokens: int) -> int:
        """The request's max_tokens, or all the context the prompt leaves; refuses what cannot fit."""
        room = self.context_len - num_prompt_tokens
        if request.max_tokens == 0 and room >= 1:
            return 0  # the prompt is scored, nothing generated (echo); the engine keeps a slot for one
        wanted = request.max_tokens if request.max_tokens is not None else room
        if wanted < 1 or num_prompt_tokens + wanted > self.context_len:
            where = "messages" if request.messages is not None else "prompt"
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.context_len} tokens. However, you requested "
                f"{num_prompt_tokens + max(wanted, 1)} tokens ({num_prompt_tokens} in the {where}, "
                f"{max(wanted, 1)} in the completion). Please reduce the length of the {where} or completion.",
                param=request.prompt_param,
            )
        if wanted < request.params.min_tokens:
            raise InvalidRequestError(
                f"min_tokens ({request.params.min_tokens}) must be <= max_tokens ({wanted}, what the context leaves "
                "after the prompt)",
                param="min_tokens",
            )
        return wanted

    def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """/tokenize: the text's (or the rendered conversation's) token ids."""
        tokenizer = self._require_tokenizer("messages" if request.messages is not None else "prompt")
        if request.messages is not None:
            text = self._render_chat(request.messages, request.add_generation_prompt, request.tools)
        else:
            assert request.prompt is not None
            text = request.prompt
        token_ids = tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
        token_strs = tokenizer.convert_ids_to_tokens(token_ids) if request.return_token_strs else None
        return Tokenized(token_ids, self.context_len, token_strs)

    def detokenize(self, token_ids: list[int]) -> str:
        """/detokenize: the text of `token_ids` (special tokens included, as written)."""
        tokenizer = self._require_tokenizer("tokens")
        vocab_size = len(tokenizer)
        outside = [token_id for token_id in token_ids if not 0 <= token_id < vocab_size]
        if outside:
            raise InvalidRequestError(
                f"tokens must be token ids in [0, {vocab_size}), got {outside[0]}", param="tokens"
            )
        return tokenizer.decode(token_ids)

    def text_of(self, token_ids: list[int]) -> str:
        """A prompt's text, decoded whole (so multi-byte characters and leading spaces survive)."""
        return self.tokenizer.decode(token_ids) if self.tokenizer is not None else ""

    def _require_tokenizer(self, param: str) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise InvalidRequestError(f"model {self.model_name!r} has no tokenizer", param=param)
        return self.tokenizer

    def _chat_token_ids(self, request: GenerationRequest) -> list[int]:
        assert request.messages is not None
        text = self._render_chat(request.messages, add_generation_prompt=True, tools=request.tools)
        # The template writes any special tokens (BOS included) itself.
        return self._require_tokenizer("messages").encode(text, add_special_tokens=False)

    def _render_chat(
        self, messages: list[ChatMessage], add_generation_prompt: bool, tools: list[dict[str, Any]] | None
    ) -> str:
        tokenizer = self.tokenizer
        if tokenizer is None or not tokenizer.chat_template:
            raise InvalidRequestError(
                f"model {self.model_name!r} has no chat template: use /v1/completions", param="messages"
            )
        conversation = [_template_message(message) for message in messages]
        try:
            return tokenizer.apply_chat_template(
                conversation, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except TemplateError as error:
            raise InvalidRequestError(f"messages do not fit the model's chat template: {error}", param="messages")

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else ""


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it; `name`, `tool_calls` and `tool_call_id` only when given."""
    rendered: dict[str, Any] = {"role": message.role, "content": message.content}
    for key in ("name", "tool_calls", "tool_call_id"):
        value = getattr(message, key)
        if value is not None:
            rendered[key] = value
    return rendered
