"""The `args` of a serve config: the models behind the one URL, and the Router in front of them.

Every field has a description: it is the reference for the YAML under `applications[].args`.
Unknown keys are rejected, and a bad value fails `serve run` with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployments.config.engine_settings import EngineSettings
from deployments.config.serve_settings import DeploymentSettings
from deployments.config.strict import Strict
from deployments.config.tenants import AuthSettings, ModelPricing, TenantConfig
from engine import shard_bundles

__all__ = ["AppConfig", "DemoModel", "ModelConfig", "ModelSource", "RequestLimits", "RouterSettings"]

DemoModel = Literal["llama", "qwen2", "mistral"]

# Model names travel in URLs' JSON bodies and in deployment names ("LLMServer:<name>").
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ModelSource(Strict):
    """Where the weights come from: exactly one of `path`, `hub_id` or `demo`."""

    path: str | None = Field(
        default=None, description="Local directory holding a Hugging Face model (config.json, weights, tokenizer)."
    )
    hub_id: str | None = Field(
        default=None, description="Hugging Face hub id, e.g. 'Qwen/Qwen2.5-0.5B-Instruct'; downloaded on first load."
    )
    demo: DemoModel | None = Field(
        default=None,
        description="A built-in tiny random-weight model of this architecture, written to `demo_dir` on first use "
        "(no download). Its output is gibberish; it exists to run the platform anywhere.",
    )
    demo_dir: str | None = Field(
        default=None,
        description="Where a demo model is written; default ~/.cache/switchyard/demo-<architecture>. Only with `demo`.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [name for name in ("path", "hub_id", "demo") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path, hub_id or demo, got {given or 'none'}")
        if self.demo_dir is not None and self.demo is None:
            raise ValueError("demo_dir is only meaningful with demo")
        return self


class ModelConfig(Strict):
    """One model behind the URL: its own Serve deployment, `LLMServer:<name>`."""

    name: str = Field(description="The id clients put in the `model` field, and in /v1/models.")
    source: ModelSource = Field(description="Where the weights come from.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Engine settings.")
    deployment: DeploymentSettings = Field(
        default_factory=DeploymentSettings, description="Serve settings of this model's deployment."
    )
    cold_start_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest a request that arrives while the model has no running replica (scaled to zero, or "
        "starting) waits for its first token; beyond it the client gets 503 with Retry-After.",
    )
    first_token_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest any other request waits for its first token (queued behind busy replicas, or "
        "arriving as the model scales to zero); beyond it the client gets 503 with Retry-After.",
    )
    stream_interval_ms: float = Field(
        default=100.0,
        ge=0,
        description="A stream sends what its request generated at most once per this many milliseconds (the first "
        "token at once). Fewer, larger messages keep the serving hops cheap; 0 sends every engine step.",
    )
    pricing: ModelPricing | None = Field(
        default=None, description="What this model's tokens cost tenants (needed by tenants with a budget)."
    )

    @field_validator("name")
    @classmethod
    def _name_is_usable(cls, name: str) -> str:
        if not _MODEL_NAME.match(name):
            raise ValueError(
                f"must be 1-128 characters of letters, digits and . _ : / - starting with a letter or digit, "
                f"got {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _gpu_engine_has_a_gpu(self) -> ModelConfig:
        on_gpu = self.engine.device.startswith("cuda")
        replica_gpus = self.deployment.ray_actor_options.num_gpus
        if self.engine.num_shards > 1:
            if replica_gpus > 0:
                raise ValueError(
                    "deployment.ray_actor_options.num_gpus must be 0 with engine.tensor_parallel_size > 1 or "
                    "engine.pipeline_parallel_size > 1: each shard reserves its own GPU"
                )
        elif on_gpu and replica_gpus == 0:
            raise ValueError(
                f"engine.device {self.engine.device!r} needs deployment.ray_actor_options.num_gpus >= 1 "
                "(Ray gives a replica only the GPUs it reserves)"
            )
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for this model's `Deployment.options`: with shards (tensor-parallel,
        pipeline stages), the replica and its shards are one placement group, so Serve adds and
        removes whole groups."""
        options = self.deployment.to_serve_options()
        if "autoscaling_config" in options:  # the policy labels its metrics with the model's name
            options["autoscaling_config"]["policy"]["policy_kwargs"]["model"] = self.name
        if self.engine.num_shards > 1:
            options["placement_group_bundles"] = self.placement_group_bundles()
            options["placement_group_strategy"] = self.engine.placement_strategy
        return options

    def placement_group_bundles(self) -> list[dict[str, float]]:
        """The engine's shard bundles, the replica's own resources added to bundle 0 (which holds the
        replica and shard 0)."""
        bundles = shard_bundles(self.engine.to_engine_config(model=self.name))
        actor = self.deployment.ray_actor_options
        first = bundles[0]
        first["CPU"] += actor.num_cpus
        if actor.memory:
            first["memory"] = float(actor.memory)
        for name, amount in actor.resources.items():
            first[name] = first.get(name, 0.0) + amount
        return bundles

    @model_validator(mode="after")
    def _engine_accepts(self) -> ModelConfig:
        try:
            self.engine.to_engine_config(model=self.name)
        except ValueError as error:
            raise ValueError(f"engine: {error}") from None
        return self

    @property
    def uses_engine_process(self) -> bool:
        """Whether the model runs in a child process of the replica (not with shards)."""
        return self.engine.engine_process and self.engine.num_shards == 1

    @property
    def deployment_name(self) -> str:
        return f"LLMServer:{self.name}"


class RequestLimits(Strict):
    """What one request may ask for; the Router refuses more with 400 (413 for the body), naming the limit."""

    max_body_bytes: int = Field(
        default=8 * 2**20, ge=1024, description="Largest request body in bytes (413 beyond it)."
    )
    max_n: int = Field(
        default=16,
        ge=1,
        le=128,
        description="Most choices (`n`) per request: each is an engine sequence, so n multiplies the request's load.",
    )
    max_prompts: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Most prompts in one /v1/completions request (a list of strings or of token-id lists); each "
        "runs `n` engine sequences.",
    )
    max_stop_sequences: int = Field(
        default=16, ge=0, description="Most `stop` strings per request (each is searched for at every engine step)."
    )
    max_stop_chars: int = Field(default=256, ge=1, description="Longest `stop` string, in characters.")


class RouterSettings(Strict):
    """The ingress deployment that speaks the OpenAI API."""

    num_replicas: int = Field(default=1, ge=1, description="Router replicas (they hold no model).")
    max_ongoing_requests: int = Field(default=1024, ge=1, description="Requests one router replica handles at once.")
    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved per router replica.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per router replica, e.g. to keep the routers on nodes of their own "
        "(`switchyard kuberay` sets one).",
    )

    @field_validator("resources")
    @classmethod
    def _custom_and_positive(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in {"CPU", "GPU", "memory"}:
                raise ValueError(f"{name!r} is not a custom resource (a router reserves num_cpus only)")
            if not amount > 0:
                raise ValueError(f"{name!r}: an amount must be > 0, got {amount}")
        return resources

    keepalive_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="A streaming request still waiting for its first token (a replica starting) gets an SSE comment "
        "this often, so proxies keep the connection open.",
    )
    limits: RequestLimits = Field(default_factory=RequestLimits, description="What one request may ask for.")


class AppConfig(Strict):
    """`applications[].args` of a serve config whose import_path is `deployments.app:build_app`."""

    models: list[ModelConfig] = Field(min_length=1, description="The models served behind the one URL.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="The OpenAI-compatible ingress.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys and their store.")
    tenants: list[TenantConfig] = Field(
        default_factory=list, description="Who may use which models, within which limits (with auth.enabled)."
    )

    @field_validator("models")
    @classmethod
    def _names_unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        _refuse_repeats("model names", [model.name for model in models])
        return models

    @field_validator("tenants")
    @classmethod
    def _tenant_names_unique(cls, tenants: list[TenantConfig]) -> list[TenantConfig]:
        _refuse_repeats("tenant names", [tenant.name for tenant in tenants])
        return tenants

    @model_validator(mode="after")
    def _auth_is_servable(self) -> AppConfig:
        if not self.auth.enabled:
            return self
        if not self.tenants:
            raise ValueError("auth.enabled needs at least one entry in tenants")
        if self.auth.is_sqlite and self.router.num_replicas > 1:
            raise ValueError(
                f"auth.store {self.auth.store!r} is SQLite, which only one router replica can share; with "
                f"router.num_replicas = {self.router.num_replicas} use a redis:// store"
            )
        return self

    @model_validator(mode="after")
    def _tenants_models_exist(self) -> AppConfig:
        models = {model.name: model for model in self.models}
        for index, tenant in enumerate(self.tenants):
            unknown = [name for name in tenant.models if name != "*" and name not in models]
            if unknown:
                raise ValueError(f"tenants[{index}] ({tenant.name}).models names no model of this app: {unknown}")
            for name in tenant.allowed_models(list(models)):
                model = models[name]
                if tenant.budget is not None and model.pricing is None:
                    raise ValueError(
                        f"tenants[{index}] ({tenant.name}) has a budget, so every model it may use needs pricing; "
                        f"model {name!r} has none"
                    )
                counts_tokens = tenant.budget is not None or tenant.tokens_per_minute is not None
                if counts_tokens and not model.engine.max_model_len:
                    raise ValueError(
                        f"tenants[{index}] ({tenant.name}) has a budget or tokens_per_minute, so every model it may "
                        f"use needs engine.max_model_len (the bound of a request's worst case); model {name!r} has none"
                    )
        return self

    def tenant(self, name: str) -> TenantConfig | None:
        return next((tenant for tenant in self.tenants if tenant.name == name), None)


def _refuse_repeats(what: str, names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what} must be unique, repeated: {', '.join(duplicates)}")
