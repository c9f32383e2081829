"""`switchyard kuberay`: RayService manifests derived from serve configs, validated against KubeRay's
CRD schema (../shared/crds), their serveConfigV2 checked as a serve config, and their worker groups
consistent with what the models need."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from safetensors import safe_open

from deployments.config import AppConfig, ModelConfig
from deployments.tools.cli import check_config, main
from deployments.tools.kuberay import RAY_VERSION, KubeRayOptions, ray_service, replica_pods
from deployments.tools.pod_memory import replica_memory_bytes
from engine.demo.tiny_models import TinyModelSpec, write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "crds"
# Every serve config, but the tenants one: its SQLite store is refused on KubeRay (tested below).
TENANTS = ROOT / "manifests" / "tenants.yaml"
MANIFESTS = sorted(path for path in (ROOT / "manifests").glob("*.yaml") if path != TENANTS)
MANIFESTS += sorted((ROOT / "manifests" / "gpu").glob("*.yaml"))
# Every manifest under manifests/kuberay but the PodMonitor (not generated; test_monitoring_files).
POD_MONITOR = ROOT / "manifests" / "kuberay" / "podmonitor.yaml"
GENERATED = sorted(path for path in (ROOT / "manifests" / "kuberay").glob("*.yaml") if path != POD_MONITOR)
COMMAND_LINE = "#   switchyard kuberay "
GIB = 2**30


def crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / name).read_text())
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


RAY_SERVICE_SCHEMA = crd_schema("ray.io_rayservices.yaml")


def serve_config(manifest: Path) -> dict[str, Any]:
    return yaml.safe_load(manifest.read_text())


def app_config(config: dict[str, Any]) -> AppConfig:
    return AppConfig.model_validate(config["applications"][0]["args"])


def pod_memory_gib(group: dict[str, Any]) -> int:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == group["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    return int(limits["memory"].removesuffix("Gi"))


def gpu_config(tensor_parallel_size: int, strategy: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """A serve config of one CUDA model in `tensor_parallel_size` shards."""
    model = {
        "name": "big",
        "source": {"hub_id": "org/big-model"},
        "engine": {"device": "cuda", "tensor_parallel_size": tensor_parallel_size, "placement_strategy": strategy},
        "deployment": {"autoscaling": {"min_replicas": min_replicas, "max_replicas": max_replicas}},
    }
    if tensor_parallel_size == 1:  # the replica itself holds the GPU
        model["deployment"]["ray_actor_options"] = {"num_gpus": 1}
    application = {"name": "switchyard", "route_prefix": "/", "import_path": "deployments.app:build_app"}
    return {"applications": [application | {"args": {"models": [model]}}]}


@pytest.mark.parametrize("generated", GENERATED, ids=lambda path: path.name)
def test_each_checked_in_service_is_what_its_command_prints_now(
    generated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = generated.read_text().splitlines(keepends=True)
    (command,) = [line for line in lines if line.startswith(COMMAND_LINE)]
    monkeypatch.chdir(ROOT)
    assert main(["kuberay", *command.removeprefix(COMMAND_LINE).split()]) == 0
    assert "".join(line for line in lines if not line.startswith("#")) == capsys.readouterr().out
    jsonschema.Draft7Validator(RAY_SERVICE_SCHEMA).validate(yaml.safe_load(generated.read_text()))


def test_the_scale_to_zero_service_lets_its_gpu_group_go_to_zero_pods() -> None:
    service = yaml.safe_load((ROOT / "manifests" / "kuberay" / "scale-to-zero-gpu.yaml").read_text())
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (gpu_group,) = [group for group in groups if group["rayStartParams"]["num-gpus"] != "0"]
    assert (gpu_group["minReplicas"], gpu_group["replicas"], gpu_group["maxReplicas"]) == (0, 0, 2)
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_every_generated_service_validates_against_the_crd_and_its_serve_config_checks(
    manifest: Path, tmp_path: Path
) -> None:
    service = ray_service(serve_config(manifest), KubeRayOptions())
    jsonschema.Draft7Validator(RAY_SERVICE_SCHEMA).validate(service)
    served = tmp_path / "served.yaml"
    served.write_text(service["spec"]["serveConfigV2"])
    assert check_config(served) == []
    assert yaml.safe_load(served.read_text())["http_options"]["host"] == "0.0.0.0"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_worker_groups_hold_every_replica_at_its_bounds(manifest: Path) -> None:
    config = serve_config(manifest)
    cluster = ray_service(config, KubeRayOptions())["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no model or router on the head
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    for model in app_config(config).models:
        autoscaling = model.deployment.autoscaling
        max_replicas = autoscaling.max_replicas if autoscaling else model.deployment.num_replicas
        for pod in replica_pods(model, KubeRayOptions()):
            fits = [
                group
                for group in groups.values()
                if int(group["rayStartParams"]["num-cpus"]) >= pod.cpus
                and int(group["rayStartParams"]["num-gpus"]) >= pod.gpus
                and pod_memory_gib(group) >= pod.memory_gib
                and group["groupName"] != "router"
                and group["maxReplicas"] >= max_replicas
            ]
            assert fits, (model.name, pod)
            if autoscaling is not None and autoscaling.min_replicas == 0:
                assert all(group["minReplicas"] == 0 for group in fits if group["groupName"].endswith("-to-zero"))
                assert any(group["groupName"].endswith("-to-zero") for group in fits)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_the_models_gpus_at_their_max_replicas_fit_the_gpu_groups(manifest: Path) -> None:
    config = serve_config(manifest)
    groups = ray_service(config, KubeRayOptions())["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    offered = sum(group["maxReplicas"] * int(group["rayStartParams"]["num-gpus"]) for group in groups)
    needed = 0
    for model in app_config(config).models:
        autoscaling = model.deployment.autoscaling
        max_replicas = autoscaling.max_replicas if autoscaling else model.deployment.num_replicas
        needed += max_replicas * sum(pod.gpus for pod in replica_pods(model, KubeRayOptions()))
    assert offered >= needed
    if "gpu" in str(manifest.parent):
        assert needed > 0  # the GPU configs do ask for GPUs


@pytest.mark.parametrize(
    ("strategy", "pod_gpus", "max_pods"),
    [("PACK", 4, 3), ("STRICT_PACK", 4, 3), ("STRICT_SPREAD", 1, 12), ("SPREAD", 1, 12)],
)
def test_tensor_parallel_replicas_pack_into_one_pod_or_spread_one_shard_per_pod(
    strategy: str, pod_gpus: int, max_pods: int
) -> None:
    config = gpu_config(4, strategy, 0, 3)
    service = ray_service(config, KubeRayOptions(gpu_type="NVIDIA-H100-80GB-HBM3"))
    jsonschema.Draft7Validator(RAY_SERVICE_SCHEMA).validate(service)
    groups = [g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] != "router"]
    # Spread: shard 0's pod also holds the replica's own CPU, so it is a shape (a group) of its own.
    assert len(groups) == (2 if strategy in {"SPREAD", "STRICT_SPREAD"} else 1)
    assert sum(group["maxReplicas"] for group in groups) == max_pods
    for group in groups:
        assert (group["rayStartParams"]["num-gpus"], group["minReplicas"]) == (str(pod_gpus), 0)
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == pod_gpus
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_pipeline_stages_under_pack_are_a_pod_each_of_their_tensor_parallel_shards() -> None:
    config = gpu_config(2, "PACK", 1, 3)
    config["applications"][0]["args"]["models"][0]["engine"]["pipeline_parallel_size"] = 2
    service = ray_service(config, KubeRayOptions(gpus_per_node=2))
    jsonschema.Draft7Validator(RAY_SERVICE_SCHEMA).validate(service)
    groups = [g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] != "router"]
    # Two pods of two GPUs a replica (stage 0's also holds the replica's CPU: a group of its own).
    assert sorted(group["rayStartParams"]["num-gpus"] for group in groups) == ["2", "2"]
    assert sum(group["maxReplicas"] for group in groups) == 2 * 3
    assert sum(group["minReplicas"] for group in groups) == 2 * 1
    # STRICT_PACK keeps the whole replica on one node: four GPUs, more than a node has.
    config["applications"][0]["args"]["models"][0]["engine"]["placement_strategy"] = "STRICT_PACK"
    with pytest.raises(ValueError, match=r"4 GPUs in one pod.*tensor_parallel_size 2 x pipeline_parallel_size 2"):
        ray_service(config, KubeRayOptions(gpus_per_node=2))


def test_a_replica_no_node_can_hold_is_refused_naming_the_model_and_setting() -> None:
    with pytest.raises(ValueError, match=r"model 'big'.*8 GPUs in one pod.*tensor_parallel_size 8.*gpus_per_node 4"):
        config = gpu_config(8, "PACK", 1, 1)
        ray_service(config, KubeRayOptions(gpus_per_node=4))


def test_a_service_beyond_the_clusters_gpu_nodes_is_refused_naming_the_limit() -> None:
    with pytest.raises(ValueError, match=r"8 GPU nodes of 1 GPUs, more than max_gpu_nodes \(6\).*max_replicas"):
        config = gpu_config(4, "STRICT_SPREAD", 1, 2)
        ray_service(config, KubeRayOptions(gpus_per_node=1, max_gpu_nodes=6))
    # Pods that share a node: two 4-GPU replicas on one 8-GPU node.
    config = gpu_config(4, "PACK", 1, 2)
    ray_service(config, KubeRayOptions(gpus_per_node=8, max_gpu_nodes=1))


def test_a_config_without_one_switchyard_application_is_refused() -> None:
    config = gpu_config(1, "PACK", 1, 1)
    config["applications"].append(copy.deepcopy(config["applications"][0]))
    with pytest.raises(ValueError, match="one application of deployments.app:build_app, got 2"):
        ray_service(config, KubeRayOptions())


def test_the_command_prints_the_manifest_and_refuses_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kuberay", str(ROOT / "manifests" / "multi-model.yaml"), "--namespace", "llm"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == ray_service(
        serve_config(ROOT / "manifests" / "multi-model.yaml"), KubeRayOptions(namespace="llm")
    )
    too_big = tmp_path / "too-big.yaml"
    too_big.write_text(yaml.safe_dump(gpu_config(8, "PACK", 1, 1)))
    assert main(["kuberay", str(too_big), "--gpus-per-node", "4"]) == 1
    assert "gpus_per_node 4" in capsys.readouterr().err


def test_auth_needs_a_redis_store_and_secrets_are_referenced_never_inlined() -> None:
    config = serve_config(TENANTS)
    with pytest.raises(ValueError, match="auth.store: an SQLite store"):
        ray_service(config, KubeRayOptions())
    config["applications"][0]["args"]["auth"]["store"] = "redis://:hunter2@redis.llm.svc:6379/0"
    with pytest.raises(ValueError, match="auth.store: the URL holds a password.*'switchyard-store'"):
        ray_service(config, KubeRayOptions())
    config["applications"][0]["args"]["auth"]["store"] = "redis://redis.llm.svc:6379/0"
    config["applications"][0]["args"]["models"][0]["source"] = {"hub_id": "Qwen/Qwen2.5-0.5B-Instruct"}
    options = KubeRayOptions(
        redis_address="redis.llm.svc:6379", model_volume_claim="models", model_configs={"llama-demo": "qwen2.5-7b"}
    )
    service = ray_service(config, options)
    jsonschema.Draft7Validator(RAY_SERVICE_SCHEMA).validate(service)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"] == "redis.llm.svc:6379"
    templates = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:
        (container,) = template["spec"]["containers"]
        environment = {entry["name"]: entry for entry in container["env"]}
        assert environment["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == options.hub_token_secret
        assert environment["SWITCHYARD_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == options.admin_key_secret
        assert environment["SWITCHYARD_STORE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == options.store_secret
        assert all("value" not in entry for name, entry in environment.items() if name != "HF_HOME")
        assert container["volumeMounts"][0] == {"name": "models", "mountPath": "/models"}
        assert template["spec"]["securityContext"] == {"fsGroup": 100}
        assert template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"


def test_a_replicas_memory_sizes_its_pod_and_custom_resources_are_refused() -> None:
    config = gpu_config(1, "PACK", 1, 1)
    actor = {"num_cpus": 2, "num_gpus": 1, "memory": 70 * 2**30}
    config["applications"][0]["args"]["models"][0]["deployment"]["ray_actor_options"] = actor
    cluster = ray_service(config, KubeRayOptions())["spec"]["rayClusterConfig"]
    (gpu_group,) = [group for group in cluster["workerGroupSpecs"] if group["groupName"] != "router"]
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == "100Gi"  # 70 GiB for the replica is 70% of the pod
    assert container["image"] == "switchyard:ray-2.60.0-gpu"  # a CUDA model: the Dockerfile's CUDA build
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    actor["resources"] = {"A100": 1}
    with pytest.raises(ValueError, match=r"model 'big': deployment.ray_actor_options.resources \(\['A100'\]\)"):
        ray_service(config, KubeRayOptions())


def test_the_serve_configs_http_options_are_kept_with_the_proxy_on_every_interface() -> None:
    config = gpu_config(1, "PACK", 1, 1) | {
        "http_options": {"host": "127.0.0.1", "port": 9000, "request_timeout_s": 30}
    }
    served = yaml.safe_load(ray_service(config, KubeRayOptions())["spec"]["serveConfigV2"])
    assert served["http_options"] == {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 30}


def cpu_model(source: dict[str, Any], **engine: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "source": source, "engine": {"dtype": "float32", **engine}})


def test_a_cpu_replicas_memory_is_its_weights_its_kv_pool_and_its_processes(tmp_path: Path) -> None:
    spec = TinyModelSpec(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512)
    directory = write_tiny_model(tmp_path / "model", spec)
    with safe_open(directory / "model.safetensors", "pt") as weights:
        weight_bytes = sum(weights.get_tensor(name).nbytes for name in weights.keys())
    # keys and values of every layer: 2 x 4 layers x 16 tokens x 2 heads x 64 dims x 4 bytes a block
    block_bytes = 2 * 4 * 16 * 2 * 64 * 4
    model = cpu_model({"path": str(directory)}, num_kv_blocks=1000)
    # the replica's server process and its engine process
    assert replica_memory_bytes(model) == [weight_bytes + 1000 * block_bytes + 2 * GIB]
    # Sized from memory, the pool takes at most max_num_seqs full-length sequences.
    model = cpu_model({"path": str(directory)}, max_num_seqs=8, max_model_len=100, engine_process=False)
    assert replica_memory_bytes(model) == [weight_bytes + 8 * 7 * block_bytes + GIB]


def test_tensor_parallel_shards_each_hold_their_slice_and_the_first_the_server() -> None:
    model = cpu_model({"hub_id": "org/m"}, tensor_parallel_size=2, num_kv_blocks=1000)
    (whole,) = replica_memory_bytes(cpu_model({"hub_id": "org/m"}, num_kv_blocks=1000), "llama-2-7b")
    first, second = replica_memory_bytes(model, "llama-2-7b")
    assert first == second + GIB
    # Half the layers' weights and half the KV heads; the embeddings and LM head are split too.
    assert abs((second - GIB) * 2 - (whole - 2 * GIB)) < 0.01 * whole


def test_models_sharing_a_group_get_pods_as_large_as_the_largest_needs() -> None:
    small = {"name": "small", "source": {"demo": "llama"}, "engine": {"num_kv_blocks": 64}}
    # 200,000 blocks of the demo model's 8 KiB in float32: about 1.5 GiB of KV
    large = {"name": "large", "source": {"demo": "qwen2"}, "engine": {"num_kv_blocks": 200_000}}
    config = gpu_config(1, "PACK", 1, 1)
    config["applications"][0]["args"]["models"] = [small, large]
    options = KubeRayOptions(memory_gib_per_cpu=1)
    (group,) = [
        g
        for g in ray_service(config, options)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        if g["groupName"] != "router"
    ]
    sizes = {
        name: replica_pods(app_config(config).models[i], options)[0].memory_gib
        for i, name in enumerate(["small", "large"])
    }
    assert sizes["small"] < sizes["large"] == pod_memory_gib(group)


def test_each_pipeline_stage_sizes_its_process_by_its_own_layers() -> None:
    (whole,) = replica_memory_bytes(cpu_model({"hub_id": "org/m"}, num_kv_blocks=16), "llama-2-7b")
    staged = cpu_model(
        {"hub_id": "org/m"}, pipeline_parallel_size=2, placement_strategy="STRICT_SPREAD", num_kv_blocks=16
    )
    first, second = replica_memory_bytes(staged, "llama-2-7b")
    # Every weight and KV layer on one stage or the other, and one more process's footprint.
    assert first + second == whole + GIB
    # 16 of the 32 layers each, the embedding on the first, the LM head on the last
    assert 6.74e9 * 4 / 2 * 0.99 < second - GIB < 6.74e9 * 4 / 2 * 1.01


def test_a_cpu_shard_sizes_its_pod_beyond_the_per_cpu_memory() -> None:
    model = cpu_model({"hub_id": "org/m"}, tensor_parallel_size=2, placement_strategy="STRICT_SPREAD", num_kv_blocks=16)
    options = KubeRayOptions(model_configs={"m": "llama-2-7b"})
    first, second = replica_pods(model, options)
    shard_0, shard_1 = replica_memory_bytes(model, "llama-2-7b")
    # llama-2-7b's 6.74 billion parameters in float32, about half of them a shard
    assert 6.74e9 * 4 / 2 < shard_1 - GIB < 6.74e9 * 4 / 2 * 1.01
    assert (first.memory_gib, second.memory_gib) == (math.ceil(shard_0 / 0.7 / GIB), math.ceil(shard_1 / 0.7 / GIB))
    assert second.memory_gib > second.cpus * options.memory_gib_per_cpu


def test_a_model_whose_dimensions_cannot_be_read_is_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model 'm': source.path '/nowhere'.*--model-config m="):
        replica_memory_bytes(cpu_model({"path": "/nowhere"}))
    with pytest.raises(ValueError, match="model 'm': its dimensions could not be read"):
        replica_memory_bytes(cpu_model({"path": str(tmp_path)}))  # a directory without config.json
    config = gpu_config(1, "PACK", 1, 1)
    with pytest.raises(ValueError, match="--model-config names no model of the config: small"):
        ray_service(config, KubeRayOptions(model_configs={"big": "llama-2-7b", "small": "mistral-7b"}))


def test_the_command_refuses_a_model_config_without_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kuberay", str(ROOT / "manifests" / "quickstart.yaml"), "--model-config", "llama-2-7b"]) == 2
    assert "--model-config takes NAME=MODEL" in capsys.readouterr().err


def test_routers_and_models_keep_to_their_own_pods() -> None:
    config = serve_config(ROOT / "manifests" / "multi-model.yaml")
    service = ray_service(config, KubeRayOptions())
    router = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["router"]
    assert (router["num_cpus"], router["resources"]) == (0, {"switchyard-router": 1})
    groups = {group["groupName"]: group for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    router_group = groups.pop("router")
    # One router replica a pod, and no CPU there for a model replica; Kubernetes still reserves one.
    assert router_group["rayStartParams"]["num-cpus"] == "0"
    assert json.loads(json.loads(router_group["rayStartParams"]["resources"])) == {"switchyard-router": 1}
    assert router_group["maxReplicas"] == app_config(config).router.num_replicas
    assert router_group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"
    assert all("resources" not in group["rayStartParams"] for group in groups.values())


def test_the_dockerfile_builds_on_the_pinned_ray_under_the_tag_the_manifests_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG BASE=rayproject/ray:{RAY_VERSION}-py311-cpu\n" in dockerfile
    assert f"--build-arg BASE=rayproject/ray:{RAY_VERSION}-py311-gpu" in dockerfile
    for tag in (f"switchyard:ray-{RAY_VERSION}", f"switchyard:ray-{RAY_VERSION}-gpu"):
        assert f"docker build -t {tag} " in dockerfile
    quickstart = yaml.safe_load((ROOT / "manifests" / "kuberay" / "quickstart.yaml").read_text())
    head = quickstart["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == f"switchyard:ray-{RAY_VERSION}"
    # The packages pyproject installs are the folders the image copies.
    for package in ("engine", "deployments", "autoscaling"):
        assert f"COPY --chown=ray:users {package} /home/ray/switchyard/{package}\n" in dockerfile


def test_router_resources_of_the_users_own_are_refused_and_cli_options_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = gpu_config(1, "PACK", 1, 1)
    config["applications"][0]["args"]["router"] = {"resources": {"edge": 1}}
    with pytest.raises(ValueError, match=r"router.resources \(\['edge'\]\).*'switchyard-router'"):
        ray_service(config, KubeRayOptions())
    quickstart = str(ROOT / "manifests" / "quickstart.yaml")
    assert main(["kuberay", quickstart, "--model-config", "demo=llama-2-7b", "--model-config", "demo=mistral-7b"]) == 2
    assert "NAME=MODEL once per model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kuberay", quickstart, "--head-cpus", "0"])
    assert "--head-cpus: must be >= 1, got 0" in capsys.readouterr().err


def test_a_cuda_replica_holds_its_weights_on_the_gpu_and_needs_no_dimensions() -> None:
    model = ModelConfig.model_validate(
        {"name": "m", "source": {"hub_id": "org/m"}, "engine": {"device": "cuda", "tensor_parallel_size": 2}}
    )
    assert replica_memory_bytes(model) == [3 * GIB + GIB, 3 * GIB]  # a footprint each, the server on shard 0's
