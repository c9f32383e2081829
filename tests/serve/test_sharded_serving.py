"""A sharded model behind the API (tensor-parallel shards, pipeline stages): it answers, and a killed
shard costs its replica, not a hang."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from ray import serve
from ray.util import placement_group_table

from deployments.app import build_app
from engine import EngineConfig, LLMEngine, SamplingParams
from tests.serve.conftest import ServeCluster

RECOVERY_TIMEOUT_S = 180.0


def completion(url: str, model: str, prompt: str, max_tokens: int) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


# (engine settings, the shards as (stage, rank), which shard to kill): a tensor-parallel rank, and
# the first pipeline stage, whose death leaves the second without the hidden state it waits for.
SHARDINGS = {
    "tp": ({"tensor_parallel_size": 2}, [(0, 0), (0, 1)], 1),
    "pp": ({"pipeline_parallel_size": 2}, [(0, 0), (1, 0)], 0),
}


@pytest.mark.parametrize("sharding", sorted(SHARDINGS))
def test_two_shard_model_answers_then_recovers_from_a_killed_shard(serve_cluster: ServeCluster, sharding: str) -> None:
    settings, layout, victim = SHARDINGS[sharding]
    model = f"{sharding}-demo"
    args = serve_cluster.demo_app_args(
        model,
        engine=settings | {"cpus_per_shard": 0.5, "max_model_len": 1024, "num_kv_blocks": 64},
        deployment={
            "ray_actor_options": {"num_cpus": 0.5},
            "health_check_period_s": 1,
            "graceful_shutdown_timeout_s": 1,
        },
    )
    url = serve_cluster.deploy(sharding, build_app(args))

    answer = completion(url, model, "Split across two shards", 12)
    assert answer.status_code == 200, answer.text
    offline = LLMEngine(EngineConfig(model=str(serve_cluster.demo_root / model), num_kv_blocks=64))
    (expected,) = offline.generate(
        ["Split across two shards"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    )
    assert answer.json()["choices"][0]["text"] == expected.text

    handle = serve.get_deployment_handle(f"LLMServer:{model}", app_name=sharding)
    shards = handle.shards.remote().result()
    assert [(shard.stage, shard.rank) for shard in shards] == layout
    # The shards run in the replica's own placement group, not one the engine reserved beside it.
    groups = [group for group in placement_group_table().values() if group["state"] == "CREATED"]
    assert [len(group["bundles"]) for group in groups] == [2]

    body = {"model": model, "prompt": "long", "max_tokens": 900, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                events.append(line)
            if len(events) == 1:
                os.kill(shards[victim].pid, signal.SIGKILL)
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error"  # the engine failed mid-request

    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while (answer := completion(url, model, "Split across two shards", 12)).status_code != 200:
        assert answer.status_code in (500, 503), answer.text  # the dead engine, then no replica
        assert time.monotonic() < deadline, "the deployment did not replace the replica that lost a shard"
        time.sleep(0.5)
    assert answer.json()["choices"][0]["text"] == expected.text
    new_shards = handle.shards.remote().result()
    assert {shard.pid for shard in new_shards}.isdisjoint({shard.pid for shard in shards})
    serve.delete(sharding)
