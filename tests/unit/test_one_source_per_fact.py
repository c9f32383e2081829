"""Facts the serve config shares with the engine and the autoscaling policy are written once."""

from __future__ import annotations

import dataclasses
import typing

from autoscaling import ScalingSettings
from deployments.config import AutoscalingSettings, EngineSettings, ModelConfig
from deployments.config.engine_settings import ENGINE_ONLY_FIELDS, REPLICA_ONLY_FIELDS
from engine import EngineConfig, shard_bundles
from engine.config import DTYPE_CHOICES, PLACEMENT_STRATEGIES, QUANTIZATIONS, SCHEDULING_POLICIES


def test_engine_settings_have_every_engine_config_field_and_no_other() -> None:
    engine_fields = {field.name for field in dataclasses.fields(EngineConfig)} - ENGINE_ONLY_FIELDS
    settings_fields = set(EngineSettings.model_fields) - REPLICA_ONLY_FIELDS
    assert settings_fields == engine_fields


def test_engine_settings_defaults_are_the_engine_configs() -> None:
    engine_defaults = {field.name: field.default for field in dataclasses.fields(EngineConfig)}
    for name, field in EngineSettings.model_fields.items():
        if name not in REPLICA_ONLY_FIELDS:
            assert field.default == engine_defaults[name], name


def test_engine_settings_allow_exactly_the_engines_choices() -> None:
    def choices(name: str) -> set[object]:
        annotation = EngineSettings.model_fields[name].annotation
        members = typing.get_args(annotation) or (annotation,)  # Literal[...] | None -> its parts
        return {value for member in members for value in typing.get_args(member) or (member,)}

    assert choices("dtype") == set(DTYPE_CHOICES)
    assert choices("scheduling") == set(SCHEDULING_POLICIES)
    assert choices("placement_strategy") == set(PLACEMENT_STRATEGIES)
    assert choices("quantization") - {type(None)} == set(QUANTIZATIONS) - {None}


def test_autoscaling_defaults_are_the_policys() -> None:
    settings = AutoscalingSettings()
    for field in dataclasses.fields(ScalingSettings):
        if field.default is not dataclasses.MISSING:
            assert getattr(settings, field.name) == field.default, field.name
    assert ScalingSettings(**settings.policy_kwargs()) == ScalingSettings(
        min_replicas=settings.min_replicas, max_replicas=settings.max_replicas
    )


def test_a_sharded_replicas_bundles_are_the_engines_plus_the_replicas_resources() -> None:
    model = ModelConfig.model_validate(
        {
            "name": "m",
            "source": {"path": "/m"},
            "engine": {"tensor_parallel_size": 3, "cpus_per_shard": 2},
            "deployment": {"ray_actor_options": {"num_cpus": 1, "resources": {"accel": 1}}},
        }
    )
    engine_bundles = shard_bundles(model.engine.to_engine_config("/m"))
    bundles = model.placement_group_bundles()
    assert bundles[1:] == engine_bundles[1:]
    assert bundles[0] == {"CPU": engine_bundles[0]["CPU"] + 1, "accel": 1}
