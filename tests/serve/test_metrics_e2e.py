"""Metrics end to end, through a real Prometheus scraping the Ray node's metrics export port.

The multi-model manifest's two models (renamed, so other tests' traffic does not mix in; one
scaled to zero so its first request is a held cold start; one with a KV pool small enough to
preempt), auth on with three tenants. A known set of requests per model (whole and streamed, some
aborted, some refused), then through Prometheus' HTTP API: the TTFT histogram counts the requests
that produced a token, generation tokens equal what the clients were told, aborts and refusals sit
under their labels, every Grafana panel's query and every alert's signal returns data, and the
alert rules load and evaluate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from ray import serve

from autoscaling.metrics import AUTOSCALING_METRIC_NAMES
from benchmarks.soak.app import new_api_key
from deployments.app import build_app
from deployments.observability.router_metrics import ROUTER_METRICS
from engine.metrics import ENGINE_METRICS
from monitoring.queries import alert_rules, dashboard_queries, to_promql
from tests.serve.conftest import REPO_ROOT, ServeCluster, manifest_args
from tests.services import PrometheusServer

APP = "metrics"
COLD = "metrics-llama"  # scaled to zero; a KV pool of 6 blocks x 16 tokens: two 53-token requests preempt
WARM = "metrics-qwen"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "switchyard.json"
ALERTS = REPO_ROOT / "monitoring" / "prometheus" / "alerts.yml"
SCRAPE_DEADLINE_S = 90.0


@dataclass
class Platform:
    url: str
    keys: dict[str, str]
    prometheus: PrometheusServer


@dataclass
class Traffic:
    """What the clients sent and saw, per model."""

    # Requests that finished, and the completion tokens their usage reported (every tenant's but
    # team-abort's, whose streams the client closed).
    completed: dict[str, int] = field(default_factory=dict)
    completion_tokens: dict[str, int] = field(default_factory=dict)
    # Streams closed by the client after their first chunk.
    aborted: dict[str, int] = field(default_factory=dict)
    bad_requests: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    bad_keys: int = 0


@pytest.fixture(scope="module")
def platform(serve_cluster: ServeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    if not (_on_path("prometheus") and _on_path("promtool")):
        pytest.fail("prometheus is not installed: `make test` installs it (apt-get install prometheus)")
    directory = tmp_path_factory.mktemp("metrics")
    args = manifest_args("multi-model.yaml", serve_cluster.demo_root)
    cold, warm = args["models"]
    cold["name"], warm["name"] = COLD, WARM
    for model in (cold, warm):
        model["source"]["demo_dir"] = str(serve_cluster.demo_root / model["name"])
        model["pricing"] = {"input_per_million": 1.0, "output_per_million": 2.0}
        model["deployment"]["ray_actor_options"]["num_cpus"] = 0.5
    cold["engine"] |= {"max_model_len": 96, "num_kv_blocks": 6, "block_size": 16, "max_num_seqs": 4}
    cold["deployment"].pop("num_replicas")
    cold["deployment"]["autoscaling"] = {"min_replicas": 0, "max_replicas": 1, "idle_timeout_s": 600}
    warm["engine"] |= {"max_model_len": 256}
    store = f"sqlite:///{directory / 'tenants.db'}"
    args["auth"] = {"enabled": True, "store": store, "key_cache_ttl_s": 1.0}
    args["tenants"] = [
        {"name": "team-a", "models": ["*"]},
        {"name": "team-abort", "models": ["*"]},
        {"name": "team-limited", "models": [WARM], "requests_per_minute": 2},
    ]
    prometheus = PrometheusServer(directory / "prometheus", [f"127.0.0.1:{serve_cluster.metrics_port}"], [ALERTS])
    prometheus.start()
    try:
        url = serve_cluster.deploy(APP, build_app(args))
        keys = {tenant["name"]: new_api_key(store, tenant["name"]) for tenant in args["tenants"]}
        yield Platform(url, keys, prometheus)
        serve.delete(APP)
    finally:
        prometheus.stop()


@pytest.fixture(scope="module")
def traffic(platform: Platform) -> Traffic:
    return asyncio.run(_send_traffic(platform))


async def _send_traffic(platform: Platform) -> Traffic:
    sent = Traffic()

    def client(tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=platform.keys[tenant], max_retries=0, timeout=240
        )

    team_a = client("team-a")
    # The cold model first, alone: its first request is held while its replica starts. The
    # Router's view of the model is then allowed to catch up, so no later request counts as cold.
    await _complete(team_a, COLD, sent)
    await _until_ready(team_a, COLD)
    for model in (COLD, WARM):
        calls = [_complete(team_a, model, sent) for _ in range(4)]  # four at once: the cold model preempts
        calls += [_stream_chat(team_a, model, sent) for _ in range(2)]
        await asyncio.gather(*calls)
        await _abort_stream(client("team-abort"), model, sent)
        with pytest.raises(openai.BadRequestError):
            await team_a.completions.create(model=model, prompt="hi", max_tokens=100_000)
        sent.bad_requests[model] = 1
    limited = client("team-limited")
    await _complete(limited, WARM, sent)
    await _complete(limited, WARM, sent)
    with pytest.raises(openai.RateLimitError):
        await limited.completions.create(model=WARM, prompt="hi", max_tokens=4)
    sent.rate_limited += 1
    bad = openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key="sy-nope-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.completions.create(model=WARM, prompt="hi", max_tokens=4)
    sent.bad_keys += 1
    return sent


async def _until_ready(client: openai.AsyncOpenAI, model: str, deadline_s: float = 30.0) -> None:
    """Poll /v1/models (a fresh read of the replicas' states) until `model` is ready."""
    deadline = time.monotonic() + deadline_s
    while (await client.models.retrieve(model)).model_extra["status"]["state"] != "ready":
        assert time.monotonic() < deadline, f"{model} is not ready"
        await asyncio.sleep(0.2)


async def _complete(client: openai.AsyncOpenAI, model: str, sent: Traffic) -> None:
    response = await client.completions.create(model=model, prompt="The metrics of", max_tokens=48, temperature=0)
    assert response.usage is not None
    _count(sent, model, response.usage.completion_tokens)


async def _stream_chat(client: openai.AsyncOpenAI, model: str, sent: Traffic) -> None:
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None
    _count(sent, model, usage.completion_tokens)


def _count(sent: Traffic, model: str, completion_tokens: int) -> None:
    sent.completed[model] = sent.completed.get(model, 0) + 1
    sent.completion_tokens[model] = sent.completion_tokens.get(model, 0) + completion_tokens


async def _abort_stream(client: openai.AsyncOpenAI, model: str, sent: Traffic) -> None:
    stream = await client.completions.create(model=model, prompt="Abort", max_tokens=70, temperature=0, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text is not None:
            break
    await stream.close()
    sent.aborted[model] = sent.aborted.get(model, 0) + 1


def _on_path(name: str) -> bool:
    return any((Path(directory) / name).exists() for directory in os.environ.get("PATH", "").split(os.pathsep))


def value(prometheus: PrometheusServer, promql: str) -> float:
    """The value of a query whose result is one sample (0 when it has none)."""
    result = prometheus.query(promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else 0.0


def wait_for(prometheus: PrometheusServer, promql: str, expected: float) -> None:
    """Poll until Prometheus' latest scrape shows `expected` (Ray reports every second, Prometheus
    scrapes every second)."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while (seen := value(prometheus, promql)) != expected:
        assert time.monotonic() < deadline, f"{promql} = {seen}, expected {expected}"
        time.sleep(0.5)


def test_counts_in_prometheus_equal_what_the_clients_saw(platform: Platform, traffic: Traffic) -> None:
    prometheus = platform.prometheus
    for model in (COLD, WARM):
        produced_a_token = traffic.completed[model] + traffic.aborted[model]
        wait_for(
            prometheus, f'sum(ray_switchyard_time_to_first_token_seconds_count{{model="{model}"}})', produced_a_token
        )
        aborted = f'sum(ray_switchyard_requests_finished_total{{model="{model}",finished_reason="abort"}})'
        wait_for(prometheus, aborted, traffic.aborted[model])
        # The aborted streams' tokens are not all seen by a client: count the other tenants'.
        generated = f'sum(ray_switchyard_generation_tokens_total{{model="{model}",tenant!="team-abort"}})'
        wait_for(prometheus, generated, traffic.completion_tokens[model])
        bad = f'sum(ray_switchyard_router_requests_total{{model="{model}",status_code="400"}})'
        wait_for(prometheus, bad, traffic.bad_requests[model])
        refused = f'sum(ray_switchyard_router_rejections_total{{model="{model}",reason="bad_request"}})'
        wait_for(prometheus, refused, traffic.bad_requests[model])
        closed = f'sum(ray_switchyard_router_requests_total{{model="{model}",status_code="499"}})'
        wait_for(prometheus, closed, traffic.aborted[model])
    wait_for(prometheus, 'sum(ray_switchyard_router_rejections_total{reason="rate_limited",tenant="team-limited"})', 1)
    wait_for(prometheus, 'sum(ray_switchyard_router_rejections_total{reason="bad_key"})', traffic.bad_keys)
    wait_for(prometheus, f'sum(ray_switchyard_cold_starts_total{{model="{COLD}",outcome="served"}})', 1)
    assert value(prometheus, f'sum(ray_switchyard_num_preemptions_total{{model="{COLD}"}})') > 0
    assert value(prometheus, f'max(ray_switchyard_autoscaling_target_replicas{{model="{COLD}"}})') == 1
    spend = value(prometheus, 'sum(ray_switchyard_tenant_spend_usd_total{tenant="team-a"})')
    assert spend > 0


# Queries whose data the traffic does not produce: it causes no server error.
NO_DATA_EXPECTED = {"5xx share of requests", "SwitchyardErrorRateHigh"}


def without_fallbacks(promql: str) -> str:
    """`promql` without its `or <series> * 0` fallbacks (which make a query read 0 rather than
    nothing when its own series are missing): what the panel shows when it has data."""
    while (start := promql.find(" or ")) != -1:
        end = promql.find(" * 0", start)
        assert end != -1, promql
        promql = promql[:start] + promql[end + len(" * 0") :]
    return promql


def test_every_dashboard_panel_and_alert_signal_returns_data(platform: Platform, traffic: Traffic) -> None:
    """Each query returns data, and so does its own part (without the fallback to 0), except
    where the traffic has nothing for it to show."""
    prometheus = platform.prometheus
    wait_for(prometheus, f'sum(ray_switchyard_cold_starts_total{{model="{COLD}",outcome="served"}})', 1)
    # A rate needs two samples of a series: wait until even the newest series has been scraped twice.
    for name in prometheus.api("label/__name__/values"):
        if name.startswith("ray_switchyard_"):
            wait_for(prometheus, f"min(count_over_time({name}[2m])) >= bool 2", 1)
    variables = {"model": "metrics-.*", "tenant": ".*", "datasource": "prometheus"}
    queries = [(f"panel {query.panel!r}", query.panel, query.expr) for query in dashboard_queries(DASHBOARD)]
    queries += [(f"alert {rule.name!r} signal", rule.name, rule.signal) for rule in alert_rules(ALERTS)]
    assert len(queries) > 20
    empty = []
    for where, name, expr in queries:
        promql = to_promql(expr, variables, rate_interval="2m")
        if not prometheus.query(promql):
            empty.append(f"{where}: {promql}")
        elif name not in NO_DATA_EXPECTED and not prometheus.query(without_fallbacks(promql)):
            empty.append(f"{where} without its fallback: {without_fallbacks(promql)}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_the_alert_rules_are_loaded_and_evaluate_without_errors(platform: Platform, traffic: Traffic) -> None:
    names = {rule.name for rule in alert_rules(ALERTS)}
    deadline = time.monotonic() + 30
    while True:
        loaded = {rule["name"]: rule for group in platform.prometheus.api("rules")["groups"] for rule in group["rules"]}
        if names <= loaded.keys() and all(loaded[name].get("lastEvaluation", "").startswith("2") for name in names):
            break
        assert time.monotonic() < deadline, f"rules not evaluated: {sorted(names - loaded.keys())}"
        time.sleep(0.5)
    assert all(loaded[name]["health"] == "ok" for name in names), {
        name: loaded[name].get("lastError") for name in names
    }


def test_switchyard_status_shows_each_model_from_a_fresh_shell(platform: Platform, traffic: Traffic) -> None:
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    env["RAY_ADDRESS"] = _gcs_address()
    result = subprocess.run(
        [sys.executable, "-m", "deployments.tools.cli", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in json.loads(result.stdout)}
    assert rows[COLD]["state"] == "ready" and rows[COLD]["running_replicas"] == 1
    assert rows[WARM]["state"] == "ready"


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_every_defined_metric_is_scraped(platform: Platform, traffic: Traffic) -> None:
    """Each metric of the engine, the Router and the autoscaler reaches Prometheus under its exported
    name. Prints each series with its value summed over labels (run with -s to see them)."""
    scraped = set(platform.prometheus.api("label/__name__/values"))
    missing = sorted(set(exported_names()) - scraped)
    assert not missing, missing
    for name in exported_names():
        print(f"{name:62s} {value(platform.prometheus, f'sum({name})'):g}")


def exported_names() -> list[str]:
    """The names Ray's exporter gives our metrics: `ray_` first, `_total` on counters, `_count` for
    a histogram (its `_bucket` and `_sum` come with it)."""
    suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}
    names = [f"ray_{spec.name}{suffix[spec.kind]}" for spec in (*ENGINE_METRICS, *ROUTER_METRICS)]
    return names + [f"ray_{name}" for name in AUTOSCALING_METRIC_NAMES]
