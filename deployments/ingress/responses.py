"""GenerationChunks -> OpenAI response bodies, for chat and completions, streamed or whole.

One `ResponseWriter` per HTTP request: it remembers what each choice has sent so far (the chat
role, the completion text offset, its tool calls) and the token counts for `usage`. A chat request
with tools has its output split into content and tool calls (deployments/ingress/tool_calls.py);
a choice that called a tool and stopped finishes with "tool_calls".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from deployments.generation import GenerationChunk, TokenLogprob
from deployments.ingress.prompt_report import EchoedToken, PromptReport, echoed_tokens, vllm_prompt_logprobs
from deployments.ingress.tool_calls import ParsedToolCall, ToolCallStream, parse_tool_calls

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
    # Once the choice's first chunk brought them: the prompt decoded whole (echo), its token
    # texts and scored tokens (prompt logprobs).
    prompt_text: str | None = None
    prompt_texts: list[str] | None = None
    prompt_scored: list[TokenLogprob] = field(default_factory=list)
    took_prompt: bool = False
    # With tool-call parsing: the choice's stream parser, and the calls it has made.
    tool_stream: ToolCallStream | None = None
    num_tool_calls: int = 0


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
        prompt_report: PromptReport | None = None,
        tool_names: set[str] | None = None,
    ) -> None:
        """`n`: every choice of the response; `choices_per_prompt`: of each prompt (a batch of
        prompts has n / choices_per_prompt of them, choice i of prompt p at index p x that + i;
        default: one prompt). `continuous_usage`: every streamed chunk carries the usage so far
        (vLLM's `stream_options.continuous_usage_stats`). `prompt_report`: echo and vLLM's
        prompt_logprobs (default: neither). `tool_names`: chat outputs are parsed for calls of
        these functions (None: not parsed)."""
        self.endpoint = endpoint
        self.prompt_report = prompt_report or PromptReport()
        self.continuous_usage = continuous_usage
        self.choices_per_prompt = choices_per_prompt or n
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.with_logprobs = with_logprobs
        self.tool_names = tool_names
        self.choices = [
            _Choice(tool_stream=ToolCallStream(tool_names) if tool_names is not None else None) for _ in range(n)
        ]
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
        took_prompt = self._take_prompt(chunk, choice)
        echoes = took_prompt and self.prompt_report.echo_prompts is not None
        echoed = self._echoed(choice) if echoes else None
        logprobs = self._logprobs(chunk.logprobs, choice, echoed) if self.with_logprobs else None
        extra = self._prompt_logprobs(choice) if took_prompt else {}
        if self.endpoint == "completion":
            text = (self._echo_text(chunk.index, choice) if echoes else "") + chunk.text
            body: Json = {"index": chunk.index, "text": text, "logprobs": logprobs} | extra
        else:
            body = {"index": chunk.index, "delta": self._chat_delta(chunk, choice), "logprobs": logprobs}
        body["finish_reason"] = self._finish_reason(chunk.finish_reason, choice)
        envelope = self._envelope(stream=True, choices=[body])
        if self.endpoint == "chat" and chunk.index == 0:
            envelope |= extra  # chat reports the prompt once, for the response
        return envelope | {"usage": self.usage()} if self.continuous_usage else envelope

    def usage_chunk(self) -> Json:
        """The last event of a stream with `stream_options.include_usage`: no choices, just usage."""
        return self._envelope(stream=True, choices=[]) | {"usage": self.usage()}

    # ----- whole responses ----------------------------------------------------------------

    def add(self, chunk: GenerationChunk) -> None:
        choice = self._record(chunk)
        self._take_prompt(chunk, choice)
        choice.text += chunk.text
        choice.logprobs.extend(chunk.logprobs or [])

    def response(self) -> Json:
        bodies = []
        for index, choice in enumerate(self.choices):
            echoes = choice.took_prompt and self.prompt_report.echo_prompts is not None
            echoed = self._echoed(choice) if echoes else None
            logprobs = self._logprobs(choice.logprobs, _Choice(), echoed) if self.with_logprobs else None
            if self.endpoint == "completion":
                text = (self._echo_text(index, choice) if echoes else "") + choice.text
                body: Json = {"index": index, "text": text, "logprobs": logprobs} | self._prompt_logprobs(choice)
            else:
                body = {"index": index, "message": self._chat_message(choice), "logprobs": logprobs}
            body["finish_reason"] = self._finish_reason(choice.finish_reason, choice)
            bodies.append(body)
        response = self._envelope(stream=False, choices=bodies) | {"usage": self.usage()}
        if self.endpoint == "chat":
            response |= self._prompt_logprobs(self.choices[0])
        return response

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

    def _chat_delta(self, chunk: GenerationChunk, choice: _Choice) -> Json:
        """A streamed chat chunk's delta: the role once, then content, and complete tool calls."""
        delta: Json = {}
        if not choice.sent_role:
            delta["role"] = "assistant"
            choice.sent_role = True
        text, calls = chunk.text, []
        if choice.tool_stream is not None:
            text, calls = choice.tool_stream.feed(chunk.text)
            if chunk.finish_reason is not None:
                text += choice.tool_stream.finish()
        if text or "role" in delta:
            delta["content"] = text
        if calls:
            first = choice.num_tool_calls
            delta["tool_calls"] = [_streamed_call(first + i, call) for i, call in enumerate(calls)]
            choice.num_tool_calls += len(calls)
        return delta

    def _chat_message(self, choice: _Choice) -> Json:
        if self.tool_names is None:
            return {"role": "assistant", "content": choice.text}
        content, calls = parse_tool_calls(choice.text, self.tool_names)
        choice.num_tool_calls = len(calls)
        message: Json = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [call.to_json() for call in calls]
        return message

    @staticmethod
    def _finish_reason(reason: str | None, choice: _Choice) -> str | None:
        """ "tool_calls" for a choice that called a tool and stopped; its own reason otherwise."""
        if reason == "stop" and choice.num_tool_calls:
            return "tool_calls"
        return reason

    def _envelope(self, *, stream: bool, choices: list[Json]) -> Json:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.endpoint]
        if stream and self.endpoint == "chat":
            kind = "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _take_prompt(self, chunk: GenerationChunk, choice: _Choice) -> bool:
        """Remember what the choice's first chunk brings of the prompt; True when this one did."""
        if choice.took_prompt or (chunk.prompt_text is None and chunk.prompt_token_texts is None):
            return False
        choice.took_prompt = True
        choice.prompt_text = chunk.prompt_text
        choice.prompt_texts = chunk.prompt_token_texts
        choice.prompt_scored = chunk.prompt_logprobs or []
        return True

    def _echoed(self, choice: _Choice) -> list[EchoedToken] | None:
        """The echoed prompt's logprob entries (None without prompt logprobs: echo without logprobs)."""
        if choice.prompt_texts is None:
            return None
        return echoed_tokens(choice.prompt_texts, choice.prompt_scored, self.prompt_report.echo_top)

    def _echo_text(self, index: int, choice: _Choice) -> str:
        """The prompt as sent, or (token ids) as the replica decoded it whole."""
        assert self.prompt_report.echo_prompts is not None  # callers check
        sent = self.prompt_report.echo_prompts[index // self.choices_per_prompt]
        return sent if sent is not None else choice.prompt_text or ""

    def _prompt_logprobs(self, choice: _Choice) -> Json:
        """vLLM's `prompt_logprobs` field, when asked for and the prompt's tokens have come."""
        top = self.prompt_report.vllm_top
        if top is None or choice.prompt_texts is None:
            return {}
        return {"prompt_logprobs": vllm_prompt_logprobs(choice.prompt_scored, top)}

    def _logprobs(
        self, logprobs: list[TokenLogprob] | None, choice: _Choice, echoed: list[EchoedToken] | None = None
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


def _streamed_call(index: int, call: ParsedToolCall) -> Json:
    """A tool call in a stream: OpenAI's delta shape, here with the whole call in one delta."""
    return {"index": index} | call.to_json()


def _chat_logprob(entry: TokenLogprob) -> Json:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.token.encode()),
        "top_logprobs": [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())} for token, logprob in entry.top
        ],
    }
