"""How Serve runs a model's deployment: replicas, autoscaling, routing, resources, health.

Autoscaling defaults are the policy's own (`autoscaling.ScalingSettings`), read from it here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field, model_validator

from autoscaling import ScalingSettings
from deployments.config.strict import Strict

__all__ = ["AutoscalingSettings", "DeploymentSettings", "RayActorOptions", "RoutingSettings"]

# Import paths Serve loads on its controller and in the handles.
AUTOSCALING_POLICY = "autoscaling.serve_policy:LLMAutoscalingPolicy"
REQUEST_ROUTER = "deployments.routing.serve_router:LLMRequestRouter"

# The policy's defaults: the one place they are written.
_POLICY_DEFAULTS: dict[str, Any] = {
    field.name: field.default
    for field in dataclasses.fields(ScalingSettings)
    if field.default is not dataclasses.MISSING
}


class AutoscalingSettings(Strict):
    """LLM-aware autoscaling of a deployment's replicas, in place of a fixed `num_replicas`.

    The policy (`autoscaling.serve_policy`) reads each replica's engine queue and KV usage; it
    applies the delays itself, so a request waiting while nothing runs scales up at once.
    """

    min_replicas: int = Field(
        default=1, ge=0, description="Fewest replicas; 0 lets an idle model release its resources."
    )
    max_replicas: int = Field(default=1, ge=1, description="Most replicas.")
    target_queue_per_replica: float = Field(
        default=_POLICY_DEFAULTS["target_queue_per_replica"],
        gt=0,
        description="Engine requests (waiting + running) per replica that autoscaling aims for; requests held "
        "for a replica count too.",
    )
    kv_usage_target: float = Field(
        default=_POLICY_DEFAULTS["kv_usage_target"],
        gt=0,
        le=1,
        description="Mean share of KV blocks in use above which one more replica is added, whatever the queue.",
    )
    idle_timeout_s: float = Field(
        default=_POLICY_DEFAULTS["idle_timeout_s"],
        gt=0,
        description="Seconds without any request before scaling down to min_replicas (0 included).",
    )
    upscale_delay_s: float = Field(
        default=_POLICY_DEFAULTS["upscale_delay_s"],
        ge=0,
        description="Seconds load must stay high before scaling up (none when nothing runs).",
    )
    downscale_delay_s: float = Field(
        default=_POLICY_DEFAULTS["downscale_delay_s"],
        ge=0,
        description="Seconds load must stay low before scaling down.",
    )
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


class RoutingSettings(Strict):
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


class RayActorOptions(Strict):
    """Resources each replica reserves."""

    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory reserved per replica.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per replica.")

    def to_ray(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude_defaults=False)


class DeploymentSettings(Strict):
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
