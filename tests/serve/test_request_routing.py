"""LLMRequestRouter on a live deployment: two replicas of one demo model behind the Router ingress.

The tests route through a handle to the model's deployment with Serve's `choose_replica` and
`dispatch`, which run the deployment's request router and say which replica it chose. Long
generations are pinned to one replica the only way a load-balancing router allows: by prefix
affinity, within the imbalance threshold.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from autoscaling import LoadSignals
from deployments.app import build_app
from deployments.generation import GenerationChunk, GenerationRequest
from engine import SamplingParams
from tests.serve.conftest import ServeCluster

APP = "routing"
MODEL = "routing-demo"
IMBALANCE_THRESHOLD = 3.0
# Long enough to outlast a test (the demo model makes ~100 tokens/s on one thread); cancelled after.
LONG_TOKENS = 3000
SHORT_TOKENS = 4
IDLE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def routing_app(serve_cluster: ServeCluster) -> Iterator[str]:
    """The app's base URL: the Router ingress and two LLMServer replicas that use LLMRequestRouter."""
    args = serve_cluster.demo_app_args(
        MODEL,
        engine={"max_model_len": 4096, "num_kv_blocks": 1024},
        deployment={
            "num_replicas": 2,
            "ray_actor_options": {"num_cpus": 0.5},
            "routing": {"imbalance_threshold": IMBALANCE_THRESHOLD, "stats_period_s": 0.5},
        },
    )
    try:
        yield serve_cluster.deploy(APP, build_app(args))
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def llm(routing_app: str) -> DeploymentHandle:
    """The model deployment's `generate`, streaming, routed by this process's LLMRequestRouter."""
    handle = serve.get_deployment_handle(f"LLMServer:{MODEL}", app_name=APP)
    return handle.options(method_name="generate", stream=True)


def generation(prompt: str, max_tokens: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(
        request_id=uuid.uuid4().hex, prompt=prompt, messages=None, params=params, max_tokens=max_tokens
    )


async def start(llm: DeploymentHandle, request: GenerationRequest) -> tuple[str, DeploymentResponseGenerator]:
    """Route `request` and start it: the chosen replica's id, and the stream once it has produced."""
    async with llm.choose_replica(request) as selection:
        stream = llm.dispatch(selection, request)
        assert isinstance(stream, DeploymentResponseGenerator)
        first = await stream.__anext__()
        assert isinstance(first, GenerationChunk), first  # not refused
    return selection.replica_id, stream


async def run(llm: DeploymentHandle, request: GenerationRequest) -> str:
    """Route `request` and run it to the end; the id of the replica that served it."""
    replica_id, stream = await start(llm, request)
    async for _ in stream:
        pass
    return replica_id


async def stop(llm: DeploymentHandle, streams: list[DeploymentResponseGenerator]) -> None:
    """Cancel `streams` and wait until no replica has a request left, so the next test starts balanced."""
    for stream in streams:
        stream.cancel()
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        signals = await llm.broadcast("load_signals").results_async(timeout_s=IDLE_TIMEOUT_S)
        if all(signal.idle_s > 0 and not signal.num_sequences for signal in signals):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas still busy {IDLE_TIMEOUT_S}s after cancelling: {signals}")
        await asyncio.sleep(0.1)


def test_the_ingress_serves_through_the_llm_request_router(routing_app: str) -> None:
    body = {"model": MODEL, "prompt": "route me", "max_tokens": SHORT_TOKENS}
    response = httpx.post(f"{routing_app}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == SHORT_TOKENS


def test_new_requests_avoid_the_replica_kept_busy(llm: DeploymentHandle) -> None:
    # The long generations share a prefix, so affinity keeps them together; the short prompts are
    # under one hashed chunk, so only load decides where they go.
    busy_prefix = "Write a very long story about a lighthouse keeper. " * 4

    async def scenario() -> tuple[list[str], list[str], list[LoadSignals]]:
        busy = [await start(llm, generation(busy_prefix + f"Story {i}.", LONG_TOKENS)) for i in range(3)]
        try:
            served = [await run(llm, generation(f"short {i}", SHORT_TOKENS)) for i in range(20)]
            signals = await llm.broadcast("load_signals").results_async(timeout_s=IDLE_TIMEOUT_S)
        finally:
            await stop(llm, [stream for _, stream in busy])
        return [replica_id for replica_id, _ in busy], served, signals

    busy_ids, served, signals = asyncio.run(scenario())
    busy_replica, num_busy = Counter(busy_ids).most_common(1)[0]
    assert num_busy >= 2, f"the long generations were not kept together: {busy_ids}"
    # They were still generating when the last short request was routed.
    assert max(signal.num_running for signal in signals) >= num_busy
    num_elsewhere = sum(replica_id != busy_replica for replica_id in served)
    assert num_elsewhere >= 16, f"only {num_elsewhere} of 20 short requests avoided the busy replica"


def test_a_shared_prefix_stays_on_one_replica_until_it_is_overloaded(llm: DeploymentHandle) -> None:
    prefix = "You are the assistant of the request routing test; answer briefly. " * 12

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        balanced = [await run(llm, generation(prefix + f"Question {i}?", SHORT_TOKENS)) for i in range(5)]
        # Long generations with the prefix, one at a time, until one is sent elsewhere.
        streams: list[DeploymentResponseGenerator] = []
        loaded: list[str] = []
        try:
            while len(loaded) < 8 and (not loaded or loaded[-1] == balanced[0]):
                replica_id, stream = await start(llm, generation(prefix + f"Essay {len(loaded)}.", LONG_TOKENS))
                streams.append(stream)
                loaded.append(replica_id)
            after = [await run(llm, generation(prefix + f"Follow-up {i}?", SHORT_TOKENS)) for i in range(5)]
        finally:
            await stop(llm, streams)
        return balanced, loaded, after

    balanced, loaded, after = asyncio.run(scenario())
    home = balanced[0]
    assert balanced == [home] * 5, "while the load is balanced, the prefix stays on one replica"
    # Each long generation on `home` makes it busier; affinity holds until it exceeds the threshold.
    moved = [index for index, replica_id in enumerate(loaded) if replica_id != home]
    assert moved, f"affinity held past the threshold: {loaded}"
    num_pinned = moved[0]
    assert num_pinned >= 2, f"affinity gave way before the threshold: {loaded}"
    assert num_pinned <= IMBALANCE_THRESHOLD + 1, f"affinity held past the threshold: {loaded}"
    assert home not in after, "with its replica overloaded, the prefix goes elsewhere"
