"""The pydantic models of a serve config's `args`, validated once at the edge (`build_app`).

    AppConfig
    ├── models: [ModelConfig]      source (ModelSource), engine (EngineSettings),
    │                              deployment (DeploymentSettings: autoscaling, routing, resources)
    ├── router: RouterSettings     the ingress, and its RequestLimits
    ├── auth: AuthSettings         API keys on/off, the tenants store, the admin key
    └── tenants: [TenantConfig]    models, rate limits, concurrency, budget, scheduling weight

Torch-free: `switchyard check` and the Router validate configs without loading a model.
"""

from deployments.config.app_config import AppConfig, DemoModel, ModelConfig, ModelSource, RequestLimits, RouterSettings
from deployments.config.engine_settings import EngineSettings
from deployments.config.serve_settings import AutoscalingSettings, DeploymentSettings, RayActorOptions, RoutingSettings
from deployments.config.tenants import ALL_MODELS, AuthSettings, Budget, ModelPricing, TenantConfig

__all__ = [
    "ALL_MODELS",
    "AppConfig",
    "AuthSettings",
    "AutoscalingSettings",
    "Budget",
    "DemoModel",
    "DeploymentSettings",
    "EngineSettings",
    "ModelConfig",
    "ModelPricing",
    "ModelSource",
    "RayActorOptions",
    "RequestLimits",
    "RouterSettings",
    "RoutingSettings",
    "TenantConfig",
]
