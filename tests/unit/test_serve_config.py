"""The serve config's `args`: validated once by AppConfig, a bad value named by its path; build_app without a
cluster."""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from ray.serve import Application

from deployments import config
from deployments.app import build_app
from deployments.config import AppConfig, AutoscalingSettings, DeploymentSettings, ModelConfig

QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "quickstart.yaml"

Args = dict[str, Any]


def quickstart_args() -> Args:
    return yaml.safe_load(QUICKSTART.read_text())["applications"][0]["args"]


def minimal_args() -> Args:
    return {"models": [{"name": "demo", "source": {"demo": "llama"}, "engine": {}, "deployment": {}}]}


def test_quickstart_args_validate() -> None:
    app_config = AppConfig.model_validate(quickstart_args())
    (model,) = app_config.models
    assert (model.name, model.source.demo, model.engine.num_kv_blocks) == ("demo", "llama", 1024)
    assert model.deployment.to_serve_options()["num_replicas"] == 1


def test_build_app_returns_a_serve_application_without_a_cluster() -> None:
    assert isinstance(build_app(quickstart_args()), Application)


def test_build_app_refuses_a_bad_config_naming_the_field() -> None:
    args = quickstart_args()
    args["models"][0]["engine"]["dtype"] = "float64"
    with pytest.raises(ValidationError, match=r"models\.0\.engine\.dtype"):
        build_app(args)


def model(args: Args) -> Args:
    return args["models"][0]


@pytest.mark.parametrize(
    ("change", "location", "message_part"),
    [
        pytest.param(lambda a: a.update(bogus=1), "bogus", "Extra inputs", id="unknown-top-level-key"),
        pytest.param(lambda a: model(a).update(bogus=1), "models.0.bogus", "Extra inputs", id="unknown-model-key"),
        pytest.param(
            lambda a: model(a)["engine"].update(bogus=1),
            "models.0.engine.bogus",
            "Extra inputs",
            id="unknown-engine-key",
        ),
        pytest.param(lambda a: a.update(models=[]), "models", "at least 1", id="no-models"),
        pytest.param(
            lambda a: model(a)["engine"].update(device="cuda"), "models.0", "num_gpus >= 1", id="cuda-without-a-gpu"
        ),
        pytest.param(
            lambda a: model(a).update(
                engine={"device": "cuda", "tensor_parallel_size": 2}, deployment={"ray_actor_options": {"num_gpus": 1}}
            ),
            "models.0",
            "num_gpus must be 0 with engine.tensor_parallel_size > 1 or engine.pipeline_parallel_size > 1",
            id="tensor-parallel-replica-with-a-gpu",
        ),
        pytest.param(
            lambda a: model(a)["engine"].update(placement_strategy="RANDOM"),
            "models.0.engine.placement_strategy",
            "STRICT_SPREAD",
            id="placement-strategy",
        ),
        pytest.param(lambda a: a["models"].append(model(a)), "models", "repeated: demo", id="duplicate-names"),
        pytest.param(lambda a: model(a).update(source={}), "models.0.source", "got none", id="source-none"),
        pytest.param(lambda a: model(a)["source"].update(path="/m"), "models.0.source", "exactly one", id="source-two"),
        pytest.param(lambda a: model(a)["source"].update(demo="gpt5"), "models.0.source.demo", "gpt5", id="demo-gpt5"),
        pytest.param(
            lambda a: model(a).update(source={"path": "/m", "demo_dir": "/d"}),
            "models.0.source",
            "demo_dir",
            id="demo-dir-without-demo",
        ),
        pytest.param(
            lambda a: model(a)["engine"].update(block_size=12),
            "models.0",
            "block_size must be a power of two",
            id="block-size-12",
        ),
        pytest.param(
            lambda a: model(a)["engine"].update(dtype="float64"), "models.0.engine.dtype", "float64", id="dtype"
        ),
        pytest.param(
            lambda a: model(a)["deployment"].update(autoscaling={"min_replicas": 3, "max_replicas": 2}),
            "models.0.deployment.autoscaling",
            "min_replicas (3) must be <= max_replicas (2)",
            id="autoscaling-order",
        ),
        pytest.param(
            lambda a: model(a)["deployment"].update(max_queued_requests=-2),
            "models.0.deployment.max_queued_requests",
            "-1",
            id="max-queued-requests",
        ),
        pytest.param(lambda a: model(a).update(name="my model"), "models.0.name", "'my model'", id="name-space"),
        pytest.param(lambda a: model(a).update(name=""), "models.0.name", "got ''", id="name-empty"),
        pytest.param(
            lambda a: a.update(router={"resources": {"CPU": 1}}), "router.resources", "num_cpus", id="router-cpu"
        ),
        pytest.param(
            lambda a: a.update(router={"resources": {"edge": 0}}), "router.resources", "> 0", id="router-zero"
        ),
    ],
)
def test_bad_config_is_refused_naming_the_field_path(
    change: Callable[[Args], None], location: str, message_part: str
) -> None:
    args = minimal_args()
    AppConfig.model_validate(copy.deepcopy(args))  # the unchanged args are valid
    change(args)
    with pytest.raises(ValidationError) as raised:
        AppConfig.model_validate(args)
    assert location in [".".join(str(part) for part in error["loc"]) for error in raised.value.errors()]
    assert location in str(raised.value)
    assert message_part in str(raised.value)


def test_serve_options_have_a_fixed_replica_count_without_autoscaling() -> None:
    options = DeploymentSettings(num_replicas=3, max_queued_requests=8).to_serve_options()
    assert (options["num_replicas"], options["max_queued_requests"]) == (3, 8)
    assert "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {}}


def test_serve_options_have_an_llm_autoscaling_policy_instead_of_a_replica_count() -> None:
    autoscaling = AutoscalingSettings(min_replicas=0, max_replicas=4, target_queue_per_replica=8, idle_timeout_s=30)
    options = DeploymentSettings(num_replicas=3, autoscaling=autoscaling).to_serve_options()
    assert "num_replicas" not in options
    serve_config = options["autoscaling_config"]
    assert (serve_config["min_replicas"], serve_config["initial_replicas"], serve_config["max_replicas"]) == (0, 0, 4)
    # Serve's own delays are off: the policy applies ours, and skips them when nothing runs.
    assert serve_config["upscale_delay_s"] == serve_config["downscale_delay_s"] == 0
    assert serve_config["downscale_to_zero_delay_s"] == 0
    assert serve_config["policy"] == {
        "policy_function": "autoscaling.serve_policy:LLMAutoscalingPolicy",
        "policy_kwargs": {
            "min_replicas": 0,
            "max_replicas": 4,
            "target_queue_per_replica": 8.0,
            "kv_usage_target": 0.9,
            "idle_timeout_s": 30.0,
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 60.0,
        },
    }


def test_every_deployment_routes_with_the_llm_request_router() -> None:
    routing = DeploymentSettings(routing={"imbalance_threshold": 2, "stats_period_s": 0.5}).to_serve_options()
    assert routing["request_router_config"] == {
        "request_router_class": "deployments.routing.serve_router:LLMRequestRouter",
        "request_router_kwargs": {"prefix_affinity": True, "imbalance_threshold": 2.0},
        "request_routing_stats_period_s": 0.5,
    }


def test_a_tensor_parallel_replica_and_its_shards_are_one_placement_group() -> None:
    args = minimal_args()
    model(args)["engine"].update(tensor_parallel_size=3, placement_strategy="STRICT_SPREAD", cpus_per_shard=2)
    model(args)["deployment"]["ray_actor_options"] = {"num_cpus": 0.5, "resources": {"accel": 1}}
    options = AppConfig.model_validate(args).models[0].serve_options()
    # The replica shares shard 0's bundle, so STRICT_SPREAD needs one node per shard, not one more.
    assert options["placement_group_bundles"] == [{"CPU": 2.5, "accel": 1}, {"CPU": 2.0}, {"CPU": 2.0}]
    assert options["placement_group_strategy"] == "STRICT_SPREAD"


def test_each_cuda_shard_reserves_a_gpu_and_a_single_shard_needs_no_placement_group() -> None:
    args = minimal_args()
    model(args)["engine"].update(device="cuda", tensor_parallel_size=2)
    model(args)["deployment"]["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 0}
    bundles = AppConfig.model_validate(args).models[0].serve_options()["placement_group_bundles"]
    assert bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert "placement_group_bundles" not in AppConfig.model_validate(minimal_args()).models[0].serve_options()


def test_pipeline_stages_reserve_a_bundle_per_shard_of_every_stage_with_the_replica() -> None:
    args = minimal_args()
    model(args)["engine"].update(device="cuda", tensor_parallel_size=2, pipeline_parallel_size=2)
    model(args)["deployment"]["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 0}
    config = AppConfig.model_validate(args).models[0]
    first_shard, other_shard = {"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}
    assert config.serve_options()["placement_group_bundles"] == [first_shard] + [other_shard] * 3
    assert not config.uses_engine_process  # the stages are processes already
    model(args)["engine"].update(tensor_parallel_size=1)
    model(args)["deployment"]["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    with pytest.raises(ValidationError, match="num_gpus must be 0 with .* or engine.pipeline_parallel_size > 1"):
        AppConfig.model_validate(args)


def test_model_deployment_is_named_after_the_model() -> None:
    assert ModelConfig(name="org/tiny-1b", source={"demo": "qwen2"}).deployment_name == "LLMServer:org/tiny-1b"


def config_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a field's annotation (through Optional, list, dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from config_models(argument)


def test_every_config_field_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = [AppConfig]
    missing = []
    while pending:
        model_type = pending.pop()
        if model_type in seen:
            continue
        seen.add(model_type)
        for name, field in model_type.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{model_type.__name__}.{name}")
            pending.extend(config_models(field.annotation))
    assert missing == []
    exported = {getattr(config, name) for name in config.__all__}
    assert seen == {item for item in exported if isinstance(item, type) and issubclass(item, BaseModel)}
