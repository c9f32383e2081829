"""The `args` of a serve config, validated once at the edge.

Every field has a description: it is the reference for the YAML under `applications[].args`.
Unknown keys are rejected, and a bad value fails `serve run` with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaling import ScalingSettings
from engine import EngineConfig

__all__ = [
    "AppConfig",
    "AutoscalingSettings",
    "DemoModel",
    "DeploymentSettings",
    "EngineSettings",
    "ModelConfig",
    "ModelSource",
    "RayActorOptions",
    "RouterSettings",
    "RoutingSettings",
]

DemoModel = Literal["llama", "qwen2", "mistral"]

# Model names travel in URLs' JSON bodies and in deployment names ("LLMServer:<name>").
# Import paths Serve loads on its controller and in the handles.
AUTOSCALING_POLICY = "autoscaling.serve_policy:LLMAutoscalingPolicy"
REQUEST_ROUTER = "deployments.request_router:LLMRequestRouter"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
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


class EngineSettings(_Strict):
    """The engine's settings (engine.EngineConfig without the model, which comes from `source`)."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights and KV cache dtype."
    )
    device: str = Field(default="cpu", description="'cpu', 'cuda' or 'cuda:N'.")
    block_size: int = Field(default=16, description="Tokens per KV block (a power of two).")
    num_kv_blocks: int | None = Field(
        default=None, description="KV pool size in blocks; null sizes it from kv_cache_memory_fraction."
    )
    kv_cache_memory_fraction: float = Field(
        default=0.9,
        description="Fraction of free device memory (system memory on CPU) for the KV cache when num_kv_blocks "
        "is null; capped at what max_num_seqs sequences of max_model_len tokens can use.",
    )
    max_num_seqs: int = Field(default=64, description="Most sequences in one step's batch.")
    max_num_batched_tokens: int = Field(
        default=2048, description="Token budget per step: decode tokens plus prefill chunk tokens."
    )
    max_model_len: int | None = Field(
        default=None, description="Longest prompt + output in tokens; null takes the model's max_position_embeddings."
    )
    scheduling: Literal["continuous", "static", "request"] = Field(
        default="continuous", description="Batching policy: iteration-level, batch-level, or one request at a time."
    )
    enable_prefix_caching: bool = Field(default=True, description="Reuse KV blocks of identical prompt prefixes.")
    quantization: Literal["int8", "nf4"] | None = Field(
        default=None,
        description="bitsandbytes weight quantization of the decoder layers' projections (not with "
        "tensor_parallel_size > 1).",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="Tensor-parallel shards of the model, one Ray actor (and on CUDA one GPU) each, reserved "
        "with the replica as one placement group; 1 runs the model in the replica.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="How a replica's shards spread over nodes (the replica shares shard 0's bundle): PACK "
        "(fewest nodes), SPREAD, STRICT_PACK (one node) or STRICT_SPREAD (one shard per node).",
    )
    cpus_per_shard: float = Field(
        default=1.0,
        gt=0,
        description="CPUs each shard reserves (its torch threads on CPU) when tensor_parallel_size > 1.",
    )
    seed: int = Field(default=0, description="Seed for requests that carry none of their own.")
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="Seconds the engine may take to load weights before the replica fails."
    )

    def to_engine_config(self, model: str) -> EngineConfig:
        """The engine's own config; raises ValueError naming a field the engine refuses."""
        fields = self.model_dump(exclude={"start_timeout_s"})
        return EngineConfig(model=model, **fields)


class AutoscalingSettings(_Strict):
    """LLM-aware autoscaling of a deployment's replicas, in place of a fixed `num_replicas`.

    The policy (`autoscaling.serve_policy`) reads each replica's engine queue and KV usage; it
    applies the delays itself, so a request waiting while nothing runs scales up at once.
    """

    min_replicas: int = Field(
        default=1, ge=0, description="Fewest replicas; 0 lets an idle model release its resources."
    )
    max_replicas: int = Field(default=1, ge=1, description="Most replicas.")
    target_queue_per_replica: float = Field(
        default=16.0,
        gt=0,
        description="Engine requests (waiting + running) per replica that autoscaling aims for; requests held "
        "for a replica count too.",
    )
    kv_usage_target: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Mean share of KV blocks in use above which one more replica is added, whatever the queue.",
    )
    idle_timeout_s: float = Field(
        default=300.0, gt=0, description="Seconds without any request before scaling down to min_replicas (0 included)."
    )
    upscale_delay_s: float = Field(
        default=5.0, ge=0, description="Seconds load must stay high before scaling up (none when nothing runs)."
    )
    downscale_delay_s: float = Field(default=60.0, ge=0, description="Seconds load must stay low before scaling down.")
    metrics_interval_s: float = Field(
        default=1.0, gt=0, description="How often replicas report their load to the autoscaler."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        ScalingSettings(**self.policy_kwargs())  # the policy's own checks, here rather than on the controller
        return self

    def policy_kwargs(self) -> dict[str, Any]:
        """The policy's settings (`autoscaling.ScalingSettings`), as Serve passes them to it."""
        return self.model_dump(exclude={"metrics_interval_s"})

    def to_serve(self) -> dict[str, Any]:
        """Serve's autoscaling_config. Serve's own delays are 0: the policy applies ours."""
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": self.min_replicas,
            "upscale_delay_s": 0.0,
            "downscale_delay_s": 0.0,
            "downscale_to_zero_delay_s": 0.0,
            "metrics_interval_s": self.metrics_interval_s,
            "look_back_period_s": 2 * self.metrics_interval_s,
            "policy": {
                "policy_function": AUTOSCALING_POLICY,
                "policy_kwargs": self.policy_kwargs(),
            },
        }


class RoutingSettings(_Strict):
    """How requests pick one of a deployment's replicas."""

    prefix_affinity: bool = Field(
        default=True, description="Send a prompt whose prefix a replica has cached to that replica."
    )
    imbalance_threshold: float = Field(
        default=4.0,
        ge=0,
        description="Prefix affinity yields when its replica's load score exceeds the least loaded one's by more.",
    )
    stats_period_s: float = Field(
        default=1.0, gt=0, description="How often each replica reports its engine load to the request router."
    )

    def to_serve(self) -> dict[str, Any]:
        """Serve's request_router_config."""
        return {
            "request_router_class": REQUEST_ROUTER,
            "request_router_kwargs": {
                "prefix_affinity": self.prefix_affinity,
                "imbalance_threshold": self.imbalance_threshold,
            },
            "request_routing_stats_period_s": self.stats_period_s,
        }


class RayActorOptions(_Strict):
    """Resources each replica reserves."""

    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory reserved per replica.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per replica.")

    def to_ray(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude_defaults=False)


class DeploymentSettings(_Strict):
    """How Serve runs a deployment's replicas."""

    num_replicas: int = Field(default=1, ge=1, description="Fixed replica count; ignored when autoscaling is set.")
    autoscaling: AutoscalingSettings | None = Field(
        default=None, description="Scale replicas with load instead of a fixed count."
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests a replica runs at once; more wait in the caller's queue."
    )
    max_queued_requests: int = Field(
        default=-1,
        ge=-1,
        description="Requests that may wait for a replica; beyond it, clients get 429 with Retry-After. -1: no limit.",
    )
    ray_actor_options: RayActorOptions = Field(
        default_factory=RayActorOptions, description="Resources each replica reserves."
    )
    routing: RoutingSettings = Field(default_factory=RoutingSettings, description="How requests pick a replica.")
    health_check_period_s: float = Field(default=10.0, gt=0, description="Seconds between replica health checks.")
    health_check_timeout_s: float = Field(default=30.0, gt=0, description="Seconds a health check may take.")
    graceful_shutdown_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="Seconds a stopping replica (scaled down, or replaced) waits for its in-flight requests to "
        "finish; long generations need long enough.",
    )

    def to_serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": self.ray_actor_options.to_ray(),
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = self.autoscaling.to_serve()
        options["request_router_config"] = self.routing.to_serve()
        return options


class ModelConfig(_Strict):
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
    stream_interval_ms: float = Field(
        default=100.0,
        ge=0,
        description="A stream sends what its request generated at most once per this many milliseconds (the first "
        "token at once). Fewer, larger messages keep the serving hops cheap; 0 sends every engine step.",
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
        if self.engine.tensor_parallel_size > 1:
            if replica_gpus > 0:
                raise ValueError(
                    "deployment.ray_actor_options.num_gpus must be 0 with engine.tensor_parallel_size > 1: each "
                    "shard reserves its own GPU"
                )
        elif on_gpu and replica_gpus == 0:
            raise ValueError(
                f"engine.device {self.engine.device!r} needs deployment.ray_actor_options.num_gpus >= 1 "
                "(Ray gives a replica only the GPUs it reserves)"
            )
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for this model's `Deployment.options`: with tensor-parallel shards, the
        replica and its shards are one placement group, so Serve adds and removes whole groups."""
        options = self.deployment.to_serve_options()
        if self.engine.tensor_parallel_size > 1:
            options["placement_group_bundles"] = self.placement_group_bundles()
            options["placement_group_strategy"] = self.engine.placement_strategy
        return options

    def placement_group_bundles(self) -> list[dict[str, float]]:
        """Bundle 0 holds the replica and shard 0; bundle i holds shard i."""
        shard = {"CPU": self.engine.cpus_per_shard}
        if self.engine.device.startswith("cuda"):
            shard["GPU"] = 1.0
        actor = self.deployment.ray_actor_options
        first = dict(shard)
        first["CPU"] += actor.num_cpus
        if actor.memory:
            first["memory"] = float(actor.memory)
        for name, amount in actor.resources.items():
            first[name] = first.get(name, 0.0) + amount
        return [first] + [dict(shard) for _ in range(self.engine.tensor_parallel_size - 1)]

    @model_validator(mode="after")
    def _engine_accepts(self) -> ModelConfig:
        try:
            self.engine.to_engine_config(model=self.name)
        except ValueError as error:
            raise ValueError(f"engine: {error}") from None
        return self

    @property
    def deployment_name(self) -> str:
        return f"LLMServer:{self.name}"


class RouterSettings(_Strict):
    """The ingress deployment that speaks the OpenAI API."""

    num_replicas: int = Field(default=1, ge=1, description="Router replicas (they hold no model).")
    max_ongoing_requests: int = Field(default=1024, ge=1, description="Requests one router replica handles at once.")
    num_cpus: float = Field(default=0.5, ge=0, description="CPUs reserved per router replica.")
    keepalive_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="A streaming request still waiting for its first token (a replica starting) gets an SSE comment "
        "this often, so proxies keep the connection open.",
    )


class AppConfig(_Strict):
    """`applications[].args` of a serve config whose import_path is `deployments.app:build_app`."""

    models: list[ModelConfig] = Field(min_length=1, description="The models served behind the one URL.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="The OpenAI-compatible ingress.")

    @field_validator("models")
    @classmethod
    def _names_unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {', '.join(duplicates)}")
        return models
