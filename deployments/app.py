"""`build_app`: the import_path of every serve config (`deployments.app:build_app`)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.config import AppConfig, ModelConfig, ModelSource
from deployments.ingress.openai_app import model_card
from deployments.ingress.router import ModelRoute, Router
from deployments.replica.llm_server import LLMServer
from deployments.tenants.gate import TenantAccess

__all__ = ["build_app"]


def build_app(args: dict[str, Any]) -> Application:
    """One LLMServer deployment per model behind one Router. A bad config raises, naming the field."""
    config = AppConfig.model_validate(args)
    handles = {model.name: _model_deployment(model) for model in config.models}
    routes = {
        model.name: ModelRoute(
            model.deployment_name,
            model.cold_start_timeout_s,
            model.first_token_timeout_s,
            model.deployment.max_ongoing_requests,
            model.deployment.max_queued_requests,
        )
        for model in config.models
    }
    cards = [model_card(model.name, _describe(model.source)) for model in config.models]
    router = serve.deployment(Router).options(
        name="Router",
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.router.num_cpus, "resources": config.router.resources},
    )
    return router.bind(
        handles,
        routes,
        cards,
        config.router.keepalive_interval_s,
        config.router.limits,
        TenantAccess.from_config(config),
        config.router.num_replicas,
    )


def _model_deployment(model: ModelConfig) -> Application:
    deployment = serve.deployment(LLMServer).options(name=model.deployment_name, **model.serve_options())
    return deployment.bind(model)


def _describe(source: ModelSource) -> str:
    if source.demo is not None:
        return f"demo:{source.demo}"
    return source.path or source.hub_id or ""
