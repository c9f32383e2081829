"""A KubeRay `RayService` derived from the serve config `serve run` takes, so the two cannot drift.

`serveConfigV2` is that config (its HTTP proxy listening on every interface); the cluster is
sized from what its models need:

- the head runs Ray's control plane and nothing else (`num-cpus: "0"`, `num-gpus: "0"`);
- the Router's replicas get a CPU worker group of their own, one replica a pod: its pods offer Ray
  no CPU but one unit of `switchyard-router`, which `serveConfigV2`'s router asks for in place of
  CPUs, so no model replica lands on a router pod (whose memory is not sized for it) and no router
  on a model's pod (which would then never be idle, and never scale down);
- every model's replica is one or more pods: with shards under STRICT_PACK, or under PACK without
  pipeline stages, one pod holds all of a replica's bundles (its GPUs on one node); under PACK
  each pipeline stage's shards are a pod (tensor parallelism inside a node, stages across nodes,
  as `switchyard plan --gpus-per-node` chooses them); under SPREAD or STRICT_SPREAD each shard's
  bundle is a pod of its own; models whose pods have the same shape share a worker group, those
  that scale to zero apart from those that do not;
- a group's `minReplicas`/`maxReplicas` add up its models' replica bounds times their pods, so a
  group whose models all scale to zero has `minReplicas: 0` and Ray's autoscaler (v2, in tree)
  removes its pods after `idle_timeout_s`.

A pod's memory covers what its processes hold in host memory (deployments.tools.pod_memory: the
planner's weight and KV figures), within the share of a pod Ray gives its tasks.

Secrets are referenced, never inlined: the hub token (`HF_TOKEN`, for `hub_id` models) and, with
auth, the admin key (`auth.admin_key_env`) and the tenants store's Redis password
(`auth.store_password_env`) come from Kubernetes Secrets; a store URL holding a password is
refused. With `redis_address` the GCS keeps its state in Redis (fault tolerance: a restarted head
recovers its actors); with auth the tenants store must be Redis, since router pods run on several
nodes. `model_volume_claim` mounts a
(ReadWriteMany) volume at /models on every pod as the hub cache, so every shard's node reads one
download.

A replica no pod could hold (more GPUs than a node has), a service beyond the cluster's GPU nodes
or an SQLite tenants store is refused, naming the model and the setting.

torch and transformers are imported when pods are sized (the planner's figures), not with this
module: `switchyard check` imports the CLI, which imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import yaml

from deployments.config import AppConfig, ModelConfig
from deployments.tools.serve_files import BUILD_APP

__all__ = ["KubeRayOptions", "PodShape", "WorkerGroup", "ray_service", "worker_groups"]

# Ports KubeRay expects by name on the head (the metrics port on every Ray pod).
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080}
METRICS_PORT = HEAD_PORTS["metrics"]
SERVE_PORT = HEAD_PORTS["serve"]
# Where `model_volume_claim` is mounted on every pod, and the group Ray's images run as.
MODEL_MOUNT = "/models"
_RAY_IMAGE_GROUP = 100
_SPREAD_STRATEGIES = {"SPREAD", "STRICT_SPREAD"}
# The Ray resource only router pods offer, one unit a pod, and each Router replica takes.
ROUTER_RESOURCE = "switchyard-router"
# The installed Ray's version, read without importing Ray: the CLI must set RAY_AUTH_MODE (see
# status_command) before anything imports it.
RAY_VERSION = version("ray")
# The share of a Ray node's memory its tasks and actors may reserve (the rest is the object store).
_TASK_MEMORY_SHARE = 0.7


@dataclass(frozen=True)
class KubeRayOptions:
    name: str = "switchyard"
    namespace: str = "default"
    # None: the Dockerfile's tag, its CUDA build (`-gpu`) when a model runs on CUDA.
    image: str | None = None
    # GPU pods: the product label their nodes carry (a node selector), none for any GPU node.
    gpu_type: str | None = None
    # The most GPUs one node (so one pod) has, and the most GPU nodes the cluster may add.
    gpus_per_node: int = 8
    max_gpu_nodes: int | None = None
    # Memory requested per CPU a pod reserves, at least (more where its models' figures need it).
    memory_gib_per_cpu: float = 4.0
    # The head's CPUs: the GCS, the dashboard, Serve's controller and the head's HTTP proxy.
    head_cpus: int = 2
    # Per model name, what `switchyard plan --model` takes (a built-in name, a config.json, a model
    # directory) for the model's dimensions, in place of reading its source's config.
    model_configs: dict[str, str] = field(default_factory=dict)
    # Seconds an idle worker pod lives before Ray's autoscaler removes it.
    idle_timeout_s: int = 60
    # KubeRay's zero-downtime upgrade: "NewCluster" brings up a new cluster before switching
    # traffic (twice the GPUs for a while), "None" updates the serve config in place only.
    upgrade_strategy: str = "NewCluster"
    # Secrets by name: the hub token (key "token"), the admin key (key "admin-key") and the
    # tenants store's Redis password (key "password").
    hub_token_secret: str = "switchyard-hub-token"
    admin_key_secret: str = "switchyard-admin-key"
    store_secret: str = "switchyard-store"
    # Redis for the GCS's fault tolerance ("host:port"; its password from `redis_secret`, key
    # "password"), and a volume claim shared by every pod for model weights; None: neither.
    redis_address: str | None = None
    redis_secret: str = "switchyard-redis"
    model_volume_claim: str | None = None


@dataclass(frozen=True, order=True)
class PodShape:
    """What one worker pod offers Ray: whole CPUs and GPUs (`ray start` takes integers), and its
    memory."""

    cpus: int
    gpus: int
    memory_gib: int

    @classmethod
    def holding(cls, cpus: float, gpus: float, memory_bytes: float, options: KubeRayOptions) -> PodShape:
        """The smallest pod that holds this much (at least one CPU): `memory_gib_per_cpu` per CPU,
        or more where its processes take (or reserve) more memory (Ray offers tasks about 70% of a
        pod's memory, the rest is its object store)."""
        whole_cpus = max(math.ceil(cpus), 1)
        reserved_gib = math.ceil(memory_bytes / _TASK_MEMORY_SHARE / 2**30)
        return cls(whole_cpus, math.ceil(gpus), max(math.ceil(whole_cpus * options.memory_gib_per_cpu), reserved_gib))

    @property
    def group_name(self) -> str:
        return f"gpu{self.gpus}-cpu{self.cpus}" if self.gpus else f"cpu{self.cpus}"


@dataclass
class WorkerGroup:
    name: str
    shape: PodShape
    min_pods: int = 0
    max_pods: int = 0
    # What its pods are for: model names, or "router".
    holds: list[str] = field(default_factory=list)


def replica_pods(model: ModelConfig, options: KubeRayOptions) -> list[PodShape]:
    """The pods one replica of `model` takes: its placement bundles, packed into one pod, one pod
    per pipeline stage or one per shard as its placement strategy places them (see the module's
    docstring), each with the memory its processes take."""
    from deployments.tools.pod_memory import replica_memory_bytes  # torch and transformers

    actor = model.deployment.ray_actor_options
    if actor.resources:
        raise ValueError(
            f"model {model.name!r}: deployment.ray_actor_options.resources ({sorted(actor.resources)}) are custom "
            "Ray resources that no generated pod offers; select nodes with --gpu-type instead"
        )
    # Host bytes per process, shard 0's (with the replica's server) first.
    processes = replica_memory_bytes(model, options.model_configs.get(model.name))
    if model.engine.num_shards > 1:
        bundles = model.placement_group_bundles()
        per_pod = _bundles_per_pod(model)
        return [
            _pod_holding(bundles[first : first + per_pod], processes[first : first + per_pod], options)
            for first in range(0, len(bundles), per_pod)
        ]
    return [PodShape.holding(actor.num_cpus, actor.num_gpus, max(actor.memory or 0, sum(processes)), options)]


def _bundles_per_pod(model: ModelConfig) -> int:
    """How many of a replica's consecutive bundles (stage by stage) one pod holds."""
    engine = model.engine
    if engine.placement_strategy in _SPREAD_STRATEGIES:
        return 1
    if engine.placement_strategy == "PACK" and engine.pipeline_parallel_size > 1:
        return engine.tensor_parallel_size
    return engine.num_shards


def _pod_holding(bundles: list[dict[str, float]], processes: list[float], options: KubeRayOptions) -> PodShape:
    """The pod for these bundles and the processes they run: their CPUs and GPUs, and the larger
    of the memory they reserve and the memory their processes take."""
    cpus, gpus = sum(bundle["CPU"] for bundle in bundles), sum(bundle.get("GPU", 0.0) for bundle in bundles)
    reserved = sum(bundle.get("memory", 0.0) for bundle in bundles)
    return PodShape.holding(cpus, gpus, max(reserved, sum(processes)), options)


def _replica_bounds(model: ModelConfig) -> tuple[int, int]:
    autoscaling = model.deployment.autoscaling
    if autoscaling is None:
        return model.deployment.num_replicas, model.deployment.num_replicas
    return autoscaling.min_replicas, autoscaling.max_replicas


def worker_groups(config: AppConfig, options: KubeRayOptions) -> list[WorkerGroup]:
    """The worker groups that host `config`'s Router and models, by pod shape; ValueError naming
    the model and the setting when no pod, or not the cluster, could host it."""
    router_pods = config.router.num_replicas
    router_shape = PodShape.holding(config.router.num_cpus, 0, 0, options)
    groups = {"router": WorkerGroup("router", router_shape, router_pods, router_pods, ["router"])}
    for model in config.models:
        min_replicas, max_replicas = _replica_bounds(model)
        pods_per_shape: dict[PodShape, int] = defaultdict(int)
        for shape in replica_pods(model, options):
            if shape.gpus > options.gpus_per_node:
                raise ValueError(
                    f"model {model.name!r}: one replica needs {shape.gpus} GPUs in one pod (engine.tensor_parallel_"
                    f"size {model.engine.tensor_parallel_size} x pipeline_parallel_size "
                    f"{model.engine.pipeline_parallel_size} under {model.engine.placement_strategy}), more than "
                    f"a node has (gpus_per_node {options.gpus_per_node}); use STRICT_SPREAD, pipeline stages "
                    "under PACK (a pod each) or fewer shards"
                )
            pods_per_shape[shape] += 1
        for shape, count in pods_per_shape.items():
            name = shape.group_name + ("-to-zero" if min_replicas == 0 else "")
            group = groups.setdefault(name, WorkerGroup(name, shape))
            # Models with the same CPUs and GPUs a pod share a group, its pods as large as the
            # largest of them needs.
            group.shape = dataclasses.replace(group.shape, memory_gib=max(group.shape.memory_gib, shape.memory_gib))
            group.min_pods += min_replicas * count
            group.max_pods += max_replicas * count
            group.holds.append(model.name)
    # GPU nodes at every model's max_replicas: each node takes as many of a group's pods as fit.
    gpu_nodes = sum(
        math.ceil(group.max_pods / (options.gpus_per_node // group.shape.gpus))
        for group in groups.values()
        if group.shape.gpus
    )
    if options.max_gpu_nodes is not None and gpu_nodes > options.max_gpu_nodes:
        raise ValueError(
            f"at their max_replicas the models need {gpu_nodes} GPU nodes of {options.gpus_per_node} GPUs, more "
            f"than max_gpu_nodes ({options.max_gpu_nodes}): lower deployment.autoscaling.max_replicas or "
            "engine.tensor_parallel_size"
        )
    return list(groups.values())


def ray_service(serve_config: dict[str, Any], options: KubeRayOptions) -> dict[str, Any]:
    """The RayService manifest for a serve config (as `serve run` reads it) of Switchyard apps."""
    applications = [app for app in serve_config["applications"] if app.get("import_path") == BUILD_APP]
    if len(applications) != 1:
        raise ValueError(f"the serve config must hold one application of {BUILD_APP}, got {len(applications)}")
    config = AppConfig.model_validate(applications[0].get("args") or {})
    unknown = sorted(set(options.model_configs) - {model.name for model in config.models})
    if unknown:
        raise ValueError(f"--model-config names no model of the config: {', '.join(unknown)}")
    if config.auth.enabled:
        _check_store(config.auth.store, options)
    if config.router.resources:
        raise ValueError(
            f"router.resources ({sorted(config.router.resources)}): the generated router pods offer only "
            f"{ROUTER_RESOURCE!r}, which the routers are given"
        )
    http_options = dict(serve_config.get("http_options") or {}) | {"host": "0.0.0.0", "port": SERVE_PORT}
    served = dict(serve_config) | {"http_options": http_options, "applications": _pinned_router(serve_config)}
    on_cuda = any(model.engine.device.startswith("cuda") for model in config.models)
    image = options.image or f"switchyard:ray-{RAY_VERSION}" + ("-gpu" if on_cuda else "")
    pods = _PodSettings(options, image, _environment(config, options))
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"version": "v2", "idleTimeoutSeconds": options.idle_timeout_s},
        "headGroupSpec": {
            "rayStartParams": {
                "num-cpus": "0",
                "num-gpus": "0",
                "dashboard-host": "0.0.0.0",
                "metrics-export-port": str(METRICS_PORT),
            },
            "template": pods.template("ray-head", PodShape.holding(options.head_cpus, 0, 0, options), HEAD_PORTS),
        },
        "workerGroupSpecs": [_worker_group(group, pods) for group in worker_groups(config, options)],
    }
    if options.redis_address is not None:
        cluster["gcsFaultToleranceOptions"] = {
            "redisAddress": options.redis_address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": options.redis_secret, "key": "password"}}},
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": options.name, "namespace": options.namespace},
        "spec": {
            "upgradeStrategy": {"type": options.upgrade_strategy},
            "serveConfigV2": yaml.safe_dump(served, sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }


def _pinned_router(serve_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The serve config's applications, the Router's replicas asking for a router pod's resource
    instead of CPUs (a router pod is the replica's alone; Kubernetes reserves its CPUs)."""
    applications = []
    for application in serve_config["applications"]:
        if application.get("import_path") == BUILD_APP:
            args = dict(application.get("args") or {})
            router = dict(args.get("router") or {})
            router["num_cpus"] = 0
            router["resources"] = dict(router.get("resources") or {}) | {ROUTER_RESOURCE: 1}
            application = application | {"args": args | {"router": router}}
        applications.append(application)
    return applications


def _check_store(store: str, options: KubeRayOptions) -> None:
    if not store.startswith(("redis://", "rediss://")):
        raise ValueError(
            "auth.store: an SQLite store or a unix socket lives on one node, and a KubeRay service's router pods "
            "run on several; use 'redis://<host>:<port>/<db>'"
        )
    if urlsplit(store).password is not None:
        raise ValueError(
            "auth.store: the URL holds a password, which the manifest would carry inline; leave it out of the URL "
            f"and put it in the Secret {options.store_secret!r} (key 'password', --store-secret), which every pod "
            "reads into auth.store_password_env"
        )


def _secret(name: str, key: str) -> dict[str, Any]:
    # Optional: a missing Secret leaves the variable unset (no hub token, the admin API off) rather
    # than every pod stuck in CreateContainerConfigError.
    return {"secretKeyRef": {"name": name, "key": key, "optional": True}}


def _environment(config: AppConfig, options: KubeRayOptions) -> list[dict[str, Any]]:
    """Every Ray container's environment (one for all of a service's pods): secrets by reference,
    the shared hub cache."""
    environment: list[dict[str, Any]] = []
    if any(model.source.hub_id is not None for model in config.models):
        environment.append({"name": "HF_TOKEN", "valueFrom": _secret(options.hub_token_secret, "token")})
    if config.auth.enabled:
        admin_key = _secret(options.admin_key_secret, "admin-key")
        environment.append({"name": config.auth.admin_key_env, "valueFrom": admin_key})
        password = _secret(options.store_secret, "password")
        environment.append({"name": config.auth.store_password_env, "valueFrom": password})
    if options.model_volume_claim is not None:
        environment.append({"name": "HF_HOME", "value": f"{MODEL_MOUNT}/huggingface"})
    return environment


def _worker_group(group: WorkerGroup, pods: _PodSettings) -> dict[str, Any]:
    shape = group.shape
    ray_start: dict[str, str] = {
        "num-cpus": str(shape.cpus),
        "num-gpus": str(shape.gpus),
        "metrics-export-port": str(METRICS_PORT),
    }
    if group.name == "router":
        # `ray start --resources` takes JSON, which KubeRay wants quoted once more.
        ray_start |= {"num-cpus": "0", "resources": json.dumps(json.dumps({ROUTER_RESOURCE: 1}))}
    return {
        "groupName": group.name,
        "replicas": group.min_pods,
        "minReplicas": group.min_pods,
        "maxReplicas": group.max_pods,
        "rayStartParams": ray_start,
        "template": pods.template("ray-worker", shape, {"metrics": METRICS_PORT}),
    }


@dataclass(frozen=True)
class _PodSettings:
    """What every Ray pod of the service shares: image, environment, volumes, GPU placement."""

    options: KubeRayOptions
    image: str
    environment: list[dict[str, Any]]

    def template(self, container: str, shape: PodShape, ports: dict[str, int]) -> dict[str, Any]:
        options = self.options
        resources: dict[str, Any] = {"cpu": str(shape.cpus), "memory": f"{shape.memory_gib}Gi"}
        if shape.gpus:
            resources["nvidia.com/gpu"] = shape.gpus
        ray_container: dict[str, Any] = {
            "name": container,
            "image": self.image,
            "ports": [{"name": name, "containerPort": port} for name, port in ports.items()],
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        }
        if self.environment:
            ray_container["env"] = self.environment
        spec: dict[str, Any] = {"containers": [ray_container]}
        mounts: list[dict[str, Any]] = []
        volumes: list[dict[str, Any]] = []
        if options.model_volume_claim is not None:
            mounts.append({"name": "models", "mountPath": MODEL_MOUNT})
            volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": options.model_volume_claim}})
            spec["securityContext"] = {"fsGroup": _RAY_IMAGE_GROUP}  # Ray's images run as ray:users
        if shape.gpus:
            # NCCL's shared-memory transport between a pod's GPUs needs more than the default 64 MiB.
            mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
            volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        if mounts:
            ray_container["volumeMounts"] = mounts
            spec["volumes"] = volumes
        if shape.gpus:
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            if options.gpu_type is not None:
                spec["nodeSelector"] = {"nvidia.com/gpu.product": options.gpu_type}
        return {"spec": spec}
