"""What a response says of its prompts: completions' `echo` (the prompt's text and, with logprobs,
its tokens' logprobs first in the legacy lists) and vLLM's `prompt_logprobs` (per prompt token,
None for the first, then a dict keyed by token id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployments.generation import TokenLogprob

__all__ = ["EchoedToken", "PromptReport", "echoed_tokens", "vllm_prompt_logprobs"]

Json = dict[str, Any]


@dataclass(frozen=True)
class PromptReport:
    """What a request asked to hear of its prompts."""

    # Echo (completions): per prompt of the batch its text as sent, None for token ids (their
    # texts are joined); None: no echo.
    echo_prompts: list[str | None] | None = None
    # Alternatives per echoed prompt token (the completion's `logprobs`).
    echo_top: int = 0
    # vLLM's prompt_logprobs: alternatives per prompt token; None: not asked for.
    vllm_top: int | None = None


@dataclass(frozen=True)
class EchoedToken:
    """An echoed prompt token: its text, and (after the first) its logprob and top alternatives."""

    token: str
    logprob: float | None
    top: dict[str, float] | None


def echoed_tokens(texts: list[str], scored: list[TokenLogprob], top: int) -> list[EchoedToken]:
    """The prompt's tokens as the legacy completions logprobs list them: the first without a logprob."""
    return [EchoedToken(texts[0], None, None)] + [
        EchoedToken(entry.token, entry.logprob, dict(entry.top[:top])) for entry in scored
    ]


def vllm_prompt_logprobs(scored: list[TokenLogprob], top: int) -> list[Json | None]:
    """vLLM's shape: None for the first prompt token, then {token id: {logprob, rank, decoded_token}}
    with the token itself and its `top` alternatives (ranked 1..top; the token's own rank is None
    when it is not among them: only the top ones are ranked)."""
    entries: list[Json | None] = [None]
    for entry in scored:
        ranked = {
            str(token_id): {"logprob": logprob, "rank": rank, "decoded_token": text}
            for rank, (token_id, (text, logprob)) in enumerate(zip(entry.top_ids[:top], entry.top[:top]), start=1)
        }
        if str(entry.token_id) not in ranked:
            own = {"logprob": entry.logprob, "rank": None, "decoded_token": entry.token}
            ranked = {str(entry.token_id): own} | ranked
        entries.append(ranked)
    return entries
