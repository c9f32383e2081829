"""Tenants in a serve config: who may call the API (`auth`), and each tenant's models and limits.

    auth:                       on/off, the store's URL, where the admin key comes from
    tenants: [TenantConfig]     models, requests/tokens per minute, concurrency, budget, weight

Prices live on each model (`ModelConfig.pricing`); a tenant's budget is spent at those prices.
"""

from __future__ import annotations

import math
import re

from pydantic import Field, field_validator

from deployments.config.strict import Strict

__all__ = ["ALL_MODELS", "AuthSettings", "Budget", "ModelPricing", "TenantConfig"]

# In a tenant's `models`: every model of the application.
ALL_MODELS = "*"

# Tenant names appear in keys' records, logs, metrics labels and store keys.
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Prices are kept exact as integer pico-USD per token: USD per million tokens with at most 6 decimals.
_PRICE_DECIMALS = 6


class ModelPricing(Strict):
    """What a model's tokens cost a tenant, in USD per million tokens."""

    input_per_million: float = Field(ge=0, description="USD per million prompt tokens (at most 6 decimals).")
    output_per_million: float = Field(ge=0, description="USD per million generated tokens (at most 6 decimals).")

    @field_validator("input_per_million", "output_per_million")
    @classmethod
    def _exact(cls, price: float) -> float:
        scaled = price * 10**_PRICE_DECIMALS
        if not math.isfinite(price) or abs(scaled - round(scaled)) > 1e-6:
            raise ValueError(f"must be a finite price with at most {_PRICE_DECIMALS} decimals, got {price}")
        return price

    @property
    def input_pico_usd_per_token(self) -> int:
        # USD per million tokens == micro-USD per token == 1e6 pico-USD per token.
        return round(self.input_per_million * 10**_PRICE_DECIMALS)

    @property
    def output_pico_usd_per_token(self) -> int:
        return round(self.output_per_million * 10**_PRICE_DECIMALS)


class Budget(Strict):
    """An amount a tenant may spend per period; periods run back to back from the Unix epoch."""

    amount_usd: float = Field(gt=0, description="USD the tenant may spend in one period.")
    period_days: float = Field(default=30.0, gt=0, description="Length of a period in days.")

    @property
    def amount_pico_usd(self) -> int:
        return round(self.amount_usd * 10**12)

    @property
    def period_s(self) -> float:
        return self.period_days * 86400.0


class TenantConfig(Strict):
    """A team sharing the platform: its keys (in the store) lead to these models and limits."""

    name: str = Field(description="The tenant's id: named by its keys, its usage and the logs.")
    models: list[str] = Field(
        default_factory=lambda: [ALL_MODELS],
        min_length=1,
        description="Models the tenant may use, by name; '*' is every model. Others answer 404 as if absent.",
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Requests admitted per minute (fixed one-minute windows); null: no limit."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per minute: a request counts its worst case (prompt bound + n * max_tokens) when "
        "admitted, corrected to what it used when it ends; null: no limit.",
    )
    max_concurrent_requests: int | None = Field(
        default=None, ge=1, description="Requests in flight at once (over every router replica); null: no limit."
    )
    budget: Budget | None = Field(
        default=None, description="Spend allowed per period at the models' prices; null: no budget."
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="Share of the engine's steps when tenants compete (fair scheduling): a tenant of weight 2 gets "
        "twice the service of a tenant of weight 1.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_usable(cls, name: str) -> str:
        if not _TENANT_NAME.match(name):
            raise ValueError(
                f"must be 1-64 characters of letters, digits and . _ - starting with a letter or digit, got {name!r}"
            )
        return name

    @property
    def budget_period_s(self) -> float:
        return self.budget.period_s if self.budget is not None else Budget.model_fields["period_days"].default * 86400

    def allowed_models(self, all_models: list[str]) -> list[str]:
        """The tenant's models among `all_models`, in their order."""
        if ALL_MODELS in self.models:
            return list(all_models)
        return [name for name in all_models if name in self.models]


class AuthSettings(Strict):
    """API keys and tenants. Off: anyone who reaches the URL may use every model without limit."""

    enabled: bool = Field(default=False, description="Require an API key (`Authorization: Bearer <key>`).")
    store: str = Field(
        default="sqlite:///~/.cache/switchyard/tenants.db",
        description="Where keys, rate-limit windows and spend are kept: 'sqlite:///<path>' (one router replica on "
        "one node) or 'redis://<host>:<port>/<db>' (several router replicas, or a cluster).",
    )
    store_password_env: str = Field(
        default="SWITCHYARD_STORE_PASSWORD",
        description="Environment variable holding the Redis store's password where the URL names none, which keeps "
        "it out of the serve config (unset: the URL's own, or none).",
    )
    admin_key_env: str = Field(
        default="SWITCHYARD_ADMIN_KEY",
        description="Environment variable holding the admin key for /admin/ (unset: the admin API is off).",
    )
    key_cache_ttl_s: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Seconds a router replica may reuse a key it looked up; a revocation takes effect on every "
        "replica within this bound.",
    )
    reservation_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest a request holds its reservation (concurrency slot, worst-case cost); one whose router "
        "died stops counting after it.",
    )

    @field_validator("store")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            raise ValueError(f"must be 'sqlite:///<path>' or 'redis://<host>:<port>/<db>', got {url!r}")
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.store.startswith("sqlite:///")
