"""Prices, worst cases and rate-limit headers: the arithmetic of a tenant's request.

Admission reserves a request's worst case, so concurrent requests cannot overshoot a budget or a
tokens-per-minute limit; the end of the request settles what it really used. The Router has no
tokenizer, so a text prompt's tokens are bounded by its UTF-8 bytes: byte-level BPE (GPT-2,
Llama 3, Qwen) and SentencePiece with byte fallback (Llama 2, Mistral) never make more tokens than
bytes, plus a few special tokens and the chat template's markup, which `TEMPLATE_TOKENS` and
`MESSAGE_TOKENS` allow for. A model's `max_model_len` caps prompt + output either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployments.config import ModelPricing
from deployments.generation import GenerationRequest
from deployments.tenants.store import LimitState

__all__ = [
    "MESSAGE_TOKENS",
    "TEMPLATE_TOKENS",
    "WorstCase",
    "cost_pico_usd",
    "prompt_token_bound",
    "rate_limit_headers",
    "worst_case",
]

# Tokens a chat template may add around the conversation (BOS, generation prompt), and per message
# (role header, separators).
TEMPLATE_TOKENS = 64
MESSAGE_TOKENS = 16


@dataclass(frozen=True)
class WorstCase:
    prompt_tokens: int
    # All choices together.
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def prompt_token_bound(request: GenerationRequest) -> int:
    """At most this many prompt tokens (see the module docstring)."""
    if isinstance(request.prompt, list):
        return len(request.prompt)
    if request.prompt is not None:
        return len(request.prompt.encode()) + TEMPLATE_TOKENS
    messages = request.messages or []
    text_bytes = sum(len(m.content.encode()) + len(m.role.encode()) + len((m.name or "").encode()) for m in messages)
    return text_bytes + MESSAGE_TOKENS * len(messages) + TEMPLATE_TOKENS


def worst_case(request: GenerationRequest, max_model_len: int | None, pricing: ModelPricing | None) -> WorstCase:
    """The most tokens (and, at `pricing`, the most expensive split) the request can use.

    Each choice's prompt + output fits in `max_model_len` (the replica refuses more), so with a
    prompt bound P, a per-choice output bound O and n choices, the worst case is the corner of
    p <= P, o <= O, p + o <= max_model_len that costs most (p = P for a prompt of token ids)."""
    context = max_model_len or math.inf
    prompt_bound = min(prompt_token_bound(request), context)
    output_bound = min(context if request.max_tokens is None else request.max_tokens, context)
    corners = [(prompt_bound, min(output_bound, context - prompt_bound))]
    if not isinstance(request.prompt, list):
        # A text prompt may be shorter than its bound, leaving more room for output.
        corners.append((min(prompt_bound, context - output_bound), output_bound))
    input_price, output_price = (
        (pricing.input_pico_usd_per_token, pricing.output_pico_usd_per_token) if pricing else (1, 1)
    )
    prompt, output = max(corners, key=lambda c: c[0] * input_price + request.n * c[1] * output_price)
    if math.isinf(prompt) or math.isinf(output):
        # No max_model_len and no max_tokens: nothing bounds the output (config validation keeps
        # tenants with budgets or token limits off such models); count the prompt only.
        return WorstCase(prompt_tokens=int(min(prompt, prompt_token_bound(request))), completion_tokens=0)
    return WorstCase(prompt_tokens=int(prompt), completion_tokens=request.n * int(output))


def cost_pico_usd(prompt_tokens: int, completion_tokens: int, pricing: ModelPricing | None) -> int:
    if pricing is None:
        return 0
    return prompt_tokens * pricing.input_pico_usd_per_token + completion_tokens * pricing.output_pico_usd_per_token


def rate_limit_headers(state: LimitState) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers; a limit the tenant does not have is left out."""
    headers: dict[str, str] = {}
    reset = _duration(state.reset_s)
    for kind, limit, remaining in (
        ("requests", state.requests_limit, state.requests_remaining),
        ("tokens", state.tokens_limit, state.tokens_remaining),
    ):
        if limit is None or remaining is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
        headers[f"x-ratelimit-reset-{kind}"] = reset
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's duration format: '20ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"
