"""GenerationChunks -> OpenAI response bodies, for chat and completions, streamed or whole.

One `ResponseWriter` per HTTP request: it remembers what each choice has sent so far (the chat
role, the completion text offset) and the token counts for `usage`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from deployments.generation import GenerationChunk, TokenLogprob

__all__ = ["Endpoint", "ResponseWriter"]

Endpoint = Literal["chat", "completion"]
Json = dict[str, Any]


@dataclass
class _Choice:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_generated_tokens: int = 0
    # Chat streams send the role once, in a choice's first chunk.
    sent_role: bool = False
    # Completions report each token's character offset in the text.
    text_offset: int = 0
    # Echo: the prompt's text and its tokens' logprob entries, once the first chunk brought them.
    echo_text: str = ""
    echo_logprobs: list[_PromptToken] = field(default_factory=list)
    echoed: bool = False


@dataclass(frozen=True)
class _PromptToken:
    """An echoed prompt token: its text, and (after the first) its logprob and top alternatives."""

    token: str
    logprob: float | None
    top: dict[str, float] | None


class ResponseWriter:
    def __init__(
        self,
        endpoint: Endpoint,
        request_id: str,
        model: str,
        n: int,
        with_logprobs: bool,
        continuous_usage: bool = False,
        choices_per_prompt: int | None = None,
        echo_prompts: list[str | None] | None = None,
    ) -> None:
        """`n`: every choice of the response; `choices_per_prompt`: of each prompt (a batch of
        prompts has n / choices_per_prompt of them, choice i of prompt p at index p x that + i;
        default: one prompt). `continuous_usage`: every streamed chunk carries the usage so far
        (vLLM's `stream_options.continuous_usage_stats`). `echo_prompts`: completions with echo, per
        prompt its text as sent (None for token ids: the tokens' texts are joined); each choice's
        text then starts with it, and its logprobs with the prompt's (the first token's null)."""
        self.endpoint = endpoint
        self.echo_prompts = echo_prompts
        self.continuous_usage = continuous_usage
        self.choices_per_prompt = choices_per_prompt or n
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.with_logprobs = with_logprobs
        self.choices = [_Choice() for _ in range(n)]
        # Per prompt (by position in the batch): its tokens, and those the prefix cache served as its
        # first choice reports them (its later choices find the prompt cached anyway).
        self._prompt_tokens: dict[int, int] = {}
        self._cached_tokens: dict[int, int] = {}
        # When the first chunk came (time.monotonic() seconds; None before).
        self.first_chunk_at: float | None = None

    # ----- streaming ----------------------------------------------------------------------

    def stream_chunk(self, chunk: GenerationChunk) -> Json:
        """The SSE event body for one chunk of one choice."""
        choice = self._record(chunk)
        echoed = self._echo(chunk, choice)
        logprobs = self._logprobs(chunk.logprobs, choice, echoed) if self.with_logprobs else None
        if self.endpoint == "completion":
            text = (choice.echo_text if echoed else "") + chunk.text
            body: Json = {"index": chunk.index, "text": text, "logprobs": logprobs}
        else:
            delta: Json = {}
            if not choice.sent_role:
                delta["role"] = "assistant"
                choice.sent_role = True
            if chunk.text or "role" in delta:
                delta["content"] = chunk.text
            body = {"index": chunk.index, "delta": delta, "logprobs": logprobs}
        body["finish_reason"] = chunk.finish_reason
        envelope = self._envelope(stream=True, choices=[body])
        return envelope | {"usage": self.usage()} if self.continuous_usage else envelope

    def usage_chunk(self) -> Json:
        """The last event of a stream with `stream_options.include_usage`: no choices, just usage."""
        return self._envelope(stream=True, choices=[]) | {"usage": self.usage()}

    # ----- whole responses ----------------------------------------------------------------

    def add(self, chunk: GenerationChunk) -> None:
        choice = self._record(chunk)
        self._echo(chunk, choice)
        choice.text += chunk.text
        choice.logprobs.extend(chunk.logprobs or [])

    def response(self) -> Json:
        bodies = []
        for index, choice in enumerate(self.choices):
            echoed = choice.echo_logprobs if choice.echoed else None
            logprobs = self._logprobs(choice.logprobs, _Choice(), echoed) if self.with_logprobs else None
            if self.endpoint == "completion":
                body: Json = {"index": index, "text": choice.echo_text + choice.text, "logprobs": logprobs}
            else:
                body = {"index": index, "message": {"role": "assistant", "content": choice.text}, "logprobs": logprobs}
            body["finish_reason"] = choice.finish_reason
            bodies.append(body)
        return self._envelope(stream=False, choices=bodies) | {"usage": self.usage()}

    @property
    def num_prompt_tokens(self) -> int:
        """Prompt tokens over all prompts of the request, as far as their chunks have come."""
        return sum(self._prompt_tokens.values())

    @property
    def num_cached_tokens(self) -> int:
        return sum(self._cached_tokens.values())

    @property
    def num_generated_tokens(self) -> int:
        """Tokens generated over all choices, as far as their chunks have come."""
        return sum(choice.num_generated_tokens for choice in self.choices)

    def usage(self) -> Json:
        num_generated = self.num_generated_tokens
        return {
            "prompt_tokens": self.num_prompt_tokens,
            "completion_tokens": num_generated,
            "total_tokens": self.num_prompt_tokens + num_generated,
            "prompt_tokens_details": {"cached_tokens": self.num_cached_tokens},
        }

    # ----- pieces -------------------------------------------------------------------------

    def _record(self, chunk: GenerationChunk) -> _Choice:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        choice = self.choices[chunk.index]
        choice.num_generated_tokens = chunk.num_generated_tokens
        choice.finish_reason = chunk.finish_reason or choice.finish_reason
        prompt, choice_of_prompt = divmod(chunk.index, self.choices_per_prompt)
        self._prompt_tokens[prompt] = chunk.num_prompt_tokens
        if choice_of_prompt == 0:
            self._cached_tokens[prompt] = max(self._cached_tokens.get(prompt, 0), chunk.num_cached_tokens)
        return choice

    def _envelope(self, *, stream: bool, choices: list[Json]) -> Json:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.endpoint]
        if stream and self.endpoint == "chat":
            kind = "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _echo(self, chunk: GenerationChunk, choice: _Choice) -> list[_PromptToken] | None:
        """With echo, on a choice's first chunk (which brings the prompt's tokens): remember the
        prompt's text and logprob entries, and return the entries; None otherwise."""
        if self.echo_prompts is None or choice.echoed or chunk.prompt_token_texts is None:
            return None
        choice.echoed = True
        sent = self.echo_prompts[chunk.index // self.choices_per_prompt]
        choice.echo_text = sent if sent is not None else "".join(chunk.prompt_token_texts)
        scored = chunk.prompt_logprobs or []
        choice.echo_logprobs = [_PromptToken(chunk.prompt_token_texts[0], None, None)] + [
            _PromptToken(entry.token, entry.logprob, dict(entry.top)) for entry in scored
        ]
        return choice.echo_logprobs

    def _logprobs(
        self, logprobs: list[TokenLogprob] | None, choice: _Choice, echoed: list[_PromptToken] | None = None
    ) -> Json:
        logprobs = logprobs or []
        if self.endpoint == "chat":
            return {"content": [_chat_logprob(entry) for entry in logprobs]}
        entries = [(entry.token, entry.logprob, entry.top) for entry in echoed or []]
        entries += [(entry.token, entry.logprob, dict(entry.top)) for entry in logprobs]
        offsets = []
        for token, _, _ in entries:
            offsets.append(choice.text_offset)
            choice.text_offset += len(token)
        return {
            "tokens": [token for token, _, _ in entries],
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": [top for _, _, top in entries],
            "text_offset": offsets,
        }


def _chat_logprob(entry: TokenLogprob) -> Json:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.token.encode()),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())} for token, logprob in entry.top
        ],
    }
