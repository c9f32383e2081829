"""The pydantic models of a serve config's `args`, validated once at the edge (`build_app`).

    AppConfig
    ├── models: [ModelConfig]      source (ModelSource), engine (EngineSettings),
    │                              deployment (DeploymentSettings: autoscaling, routing, resources)
    └── router: RouterSettings     the ingress, and its RequestLimits

Torch-free: `switchyard check` and the Router validate configs without loading a model.
"""

from deployments.config.app_config import AppConfig, DemoModel, ModelConfig, ModelSource, RequestLimits, RouterSettings
from deployments.config.engine_settings import EngineSettings
from deployments.config.serve_settings import AutoscalingSettings, DeploymentSettings, RayActorOptions, RoutingSettings

__all__ = [
    "AppConfig",
    "AutoscalingSettings",
    "DemoModel",
    "DeploymentSettings",
    "EngineSettings",
    "ModelConfig",
    "ModelSource",
    "RayActorOptions",
    "RequestLimits",
    "RouterSettings",
    "RoutingSettings",
]
