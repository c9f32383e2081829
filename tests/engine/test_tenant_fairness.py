"""Tenants on a real engine (the tiny llama): under "fair" a new tenant's request starts within a
few steps of another tenant's flood, under "fcfs" only after it; preempted requests recompute to
the same greedy tokens; the tenant reaches add_request from every entry point, and a bad one is
refused."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams

FLOOD = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
SHORT = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
NUM_FLOOD_REQUESTS = 6
MAX_NUM_SEQS = 2


def make_engine(llama_dir: Path, tenant_scheduling: str = "fair") -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=str(llama_dir),
            dtype="float32",
            num_kv_blocks=64,
            block_size=8,
            max_model_len=256,
            max_num_seqs=MAX_NUM_SEQS,
            tenant_scheduling=tenant_scheduling,
        )
    )


@dataclass
class FloodRun:
    # Steps from the newcomer's arrival to its first token.
    steps_to_newcomer_token: int
    tokens: dict[str, list[int]]
    num_preemptions: int


def run_flood(llama_dir: Path, tenant_scheduling: str) -> FloodRun:
    """Tenant "a" queues 6 long requests and runs 3 steps; then tenant "b" adds one short one."""
    engine = make_engine(llama_dir, tenant_scheduling)
    tokens: dict[str, list[int]] = defaultdict(list)

    def step() -> set[str]:
        outputs = engine.step()
        for output in outputs:
            tokens[output.request_id] += output.new_token_ids
        return {output.request_id for output in outputs if output.new_token_ids}

    for index in range(NUM_FLOOD_REQUESTS):
        engine.add_request(f"a{index}", [10 + index, 20, 30, 40, 50], FLOOD, tenant="a")
    for _ in range(3):
        step()
    engine.add_request("b", [60, 61, 62], SHORT, tenant="b")
    num_steps = 1
    while "b" not in step():
        num_steps += 1
    while engine.has_unfinished_requests():
        step()
    return FloodRun(num_steps, dict(tokens), engine.stats().num_preemptions)


@pytest.fixture(scope="module")
def flood_runs(llama_dir: Path) -> dict[str, FloodRun]:
    return {policy: run_flood(llama_dir, policy) for policy in ("fair", "fcfs")}


def test_a_newcomer_tenant_gets_its_first_token_within_steps_of_a_flood_only_under_fair(
    flood_runs: dict[str, FloodRun],
) -> None:
    # Fair: in the next step b (lifted to a's counter, running fewer) is admitted, a giving up a
    # slot; its first token comes from that step.
    assert flood_runs["fair"].steps_to_newcomer_token == 1
    # FCFS: b waits until a slot frees after the last of a's requests is admitted (3 waves of 48).
    assert flood_runs["fcfs"].steps_to_newcomer_token > 2 * FLOOD.max_tokens


def test_preempted_requests_recompute_to_the_same_greedy_tokens(flood_runs: dict[str, FloodRun]) -> None:
    fair, fcfs = flood_runs["fair"], flood_runs["fcfs"]

    assert fair.num_preemptions > 0 and fcfs.num_preemptions == 0
    assert fair.tokens == fcfs.tokens
    assert sum(map(len, fair.tokens.values())) == NUM_FLOOD_REQUESTS * FLOOD.max_tokens + SHORT.max_tokens


@pytest.fixture(scope="module")
def engine(llama_dir: Path) -> LLMEngine:
    return make_engine(llama_dir)


@pytest.mark.parametrize(
    ("field", "tenant", "tenant_weight"),
    [
        ("tenant_weight", "t", 0.0),
        ("tenant_weight", "t", -1.0),
        ("tenant_weight", "t", float("nan")),
        ("tenant_weight", "t", float("inf")),
        ("tenant_weight", "t", True),
        ("tenant_weight", "t", "2"),
        ("tenant_weight", "t", None),
        ("tenant", None, 1.0),
        ("tenant", 7, 1.0),
    ],
)
def test_add_request_refuses_a_bad_tenant_and_queues_nothing(
    engine: LLMEngine, field: str, tenant: object, tenant_weight: object
) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        engine.add_request("bad", [5, 6, 7], SHORT, tenant=tenant, tenant_weight=tenant_weight)  # type: ignore[arg-type]

    assert not engine.has_unfinished_requests()
    assert "bad" not in engine.scheduler.sequences


def test_a_weighted_tenant_runs_with_its_weight(engine: LLMEngine) -> None:
    engine.add_request("heavy", [5, 6, 7], SHORT, tenant="heavy", tenant_weight=2)
    seq = engine.scheduler.sequences["heavy"]
    assert (seq.tenant, seq.tenant_weight) == ("heavy", 2.0)
    while engine.has_unfinished_requests():
        engine.step()

    # 3 prompt tokens and 4 generated, at half price.
    assert engine.scheduler.waiting.tenants["heavy"].counter == (3 * 1.0 + 4 * 2.0) / 2


def test_async_engine_passes_the_tenant_to_add_request(engine: LLMEngine) -> None:
    received: list[tuple[str, float]] = []
    add_request = engine.add_request

    def recording_add_request(*args: object) -> None:
        received.append((args[3], args[4]))  # type: ignore[arg-type]
        add_request(*args)  # type: ignore[arg-type]

    async def scenario() -> None:
        async_engine = AsyncLLMEngine.from_engine(engine)
        await async_engine.start()
        try:
            async for _ in async_engine.generate("t1", [5, 6, 7], SHORT, tenant="team-x", tenant_weight=3.0):
                pass
            async for _ in async_engine.generate("t2", [5, 6, 7], SHORT):
                pass
        finally:
            await async_engine.shutdown()

    engine.add_request = recording_add_request  # type: ignore[method-assign]
    try:
        asyncio.run(scenario())
    finally:
        del engine.add_request

    assert received == [("team-x", 3.0), ("", 1.0)]


def test_the_engine_process_receives_the_tenant(llama_dir: Path, engine: LLMEngine) -> None:
    expected = engine.generate([[5, 6, 7]], SHORT)[0].token_ids

    async def scenario() -> list[int]:
        async_engine = AsyncLLMEngine(engine.config, engine_process=True, num_threads=1)
        await async_engine.start(timeout_s=120)
        try:
            # Only the child checks the weight: refused there, it crossed the process boundary.
            with pytest.raises(ValueError, match=r"^tenant_weight\b"):
                async for _ in async_engine.generate("refused", [5, 6, 7], SHORT, tenant="x", tenant_weight=0.0):
                    pass
            outputs = [o async for o in async_engine.generate("ok", [5, 6, 7], SHORT, tenant="x", tenant_weight=2.0)]
            return outputs[-1].token_ids
        finally:
            await async_engine.shutdown()

    assert asyncio.run(scenario()) == expected
