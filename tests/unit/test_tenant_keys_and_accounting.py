"""Keys, worst-case reservations, prices and the rate-limit headers: plain functions, no services."""

from __future__ import annotations

import pytest

from deployments.config import ModelPricing
from deployments.generation import ChatMessage, GenerationRequest
from deployments.tenants import keys
from deployments.tenants.accounting import (
    MESSAGE_TOKENS,
    TEMPLATE_TOKENS,
    cost_pico_usd,
    prompt_token_bound,
    rate_limit_headers,
    worst_case,
)
from deployments.tenants.store import LimitState
from engine import SamplingParams


def request(
    prompt: str | list[int] | None = "héllo", max_tokens: int | None = 10, n: int = 1, **kw
) -> GenerationRequest:
    return GenerationRequest("r", prompt, kw.get("messages"), SamplingParams(), max_tokens, n=n)


def test_keys_are_random_prefixed_and_only_their_hash_matches() -> None:
    first, second = keys.new_key(), keys.new_key()
    assert first.key.startswith("sy-") and first.key != second.key
    assert keys.key_id_of(first.key) == first.key_id and first.key_id not in (second.key_id,)
    assert len(first.key) - len(f"sy-{first.key_id}-") == 43  # 256 bits of secret
    assert first.key not in first.key_hash
    assert keys.matches(first.key, first.key_hash) and not keys.matches(second.key, first.key_hash)
    assert keys.key_id_of("sy-short-secret") is None and keys.key_id_of(first.key + "x") is None


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []
    monkeypatch.setattr(keys.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    key = keys.new_key()
    assert keys.matches(key.key, key.key_hash)
    assert compared == [(key.key_hash, key.key_hash)]


def test_a_prompt_is_bounded_by_its_bytes_and_the_templates_allowance() -> None:
    assert prompt_token_bound(request([5, 6, 7])) == 3
    assert prompt_token_bound(request("héllo")) == 6 + TEMPLATE_TOKENS  # é is two bytes
    chat = request(None, messages=[ChatMessage("user", "hi"), ChatMessage("assistant", "yo", name="bot")])
    assert prompt_token_bound(chat) == (2 + 4) + (2 + 9 + 3) + 2 * MESSAGE_TOKENS + TEMPLATE_TOKENS


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "n", "max_model_len", "expected"),
    [
        ([1] * 10, 5, 1, 100, (10, 5)),
        ([1] * 10, 5, 3, 100, (10, 15)),  # every choice may generate max_tokens
        ([1] * 10, None, 1, 100, (10, 90)),  # no max_tokens: whatever the context leaves
        ([1] * 10, 95, 1, 100, (10, 90)),  # token ids: the prompt's length is exact
        ("x" * 10, 95, 1, 100, (5, 95)),  # text may be shorter: output is dearer, the worst split has more
        ([1] * 200, 5, 1, 100, (100, 0)),  # refused by the replica; reserves the context at most
        ([1] * 10, 0, 1, 100, (10, 0)),  # max_tokens 0 (echo scoring) generates nothing
    ],
)
def test_the_worst_case_is_the_most_expensive_split_the_context_allows(
    prompt: str | list[int], max_tokens: int | None, n: int, max_model_len: int, expected: tuple[int, int]
) -> None:
    pricing = ModelPricing(input_per_million=1.0, output_per_million=3.0)
    worst = worst_case(request(prompt, max_tokens, n), max_model_len, pricing)
    assert (worst.prompt_tokens, worst.completion_tokens) == expected


def test_prices_are_exact_integers_of_pico_usd() -> None:
    pricing = ModelPricing(input_per_million=0.15, output_per_million=0.6)
    assert cost_pico_usd(1_000_000, 0, pricing) == 150_000_000_000  # 0.15 USD
    assert cost_pico_usd(3, 7, pricing) == 3 * 150_000 + 7 * 600_000
    assert cost_pico_usd(3, 7, None) == 0
    with pytest.raises(ValueError, match="at most 6 decimals"):
        ModelPricing(input_per_million=0.1234567, output_per_million=1)


def test_rate_limit_headers_use_openais_names_and_durations() -> None:
    state = LimitState(requests_limit=60, requests_remaining=59, tokens_limit=None, tokens_remaining=None, reset_s=6.5)
    assert rate_limit_headers(state) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "6.5s",
    }
    both = LimitState(1, 0, 1000, -5, 0.02)
    assert rate_limit_headers(both)["x-ratelimit-remaining-tokens"] == "0"
    assert rate_limit_headers(both)["x-ratelimit-reset-tokens"] == "20ms"
