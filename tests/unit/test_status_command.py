"""`switchyard status`: Serve's status and Ray's metrics text become one row per model."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.serve.schema import ReplicaState

from autoscaling.metrics import AUTOSCALING_METRIC_NAMES
from autoscaling.policy import CAUSES
from deployments.config import ModelConfig
from deployments.tools import cli, status_command
from deployments.tools.status_command import (
    ClusterUnavailableError,
    ModelRow,
    collect_samples,
    enable_token_auth_if_token_exists,
    model_rows,
    render_table,
)

_RAY_LABELS = 'Component="core_worker",NodeAddress="10.0.0.1",SessionName="session_1",Version="2.60.0"'


def _replica(worker_id: str, model: str, kv_usage: float, running: dict[str, int], waiting: dict[str, int]) -> str:
    """One replica's engine gauges, as Ray's exporter writes them."""
    labels = f'{_RAY_LABELS},WorkerId="{worker_id}",model="{model}"'
    lines = [f"ray_switchyard_kv_cache_usage_perc{{{labels}}} {kv_usage}"]
    lines += [f'ray_switchyard_num_requests_running{{{labels},tenant="{t}"}} {n}' for t, n in running.items()]
    lines += [f'ray_switchyard_num_requests_waiting{{{labels},tenant="{t}"}} {n}' for t, n in waiting.items()]
    return "\n".join(lines)


def _controller(model: str, target: int, desired: int, running: int, cause: str) -> str:
    """The autoscaling policy's gauges for one model, recorded in the Serve controller."""
    labels = f'{_RAY_LABELS},WorkerId="controller",model="{model}"'
    lines = [
        f"ray_switchyard_autoscaling_target_replicas{{{labels}}} {target}",
        f"ray_switchyard_autoscaling_desired_replicas{{{labels}}} {desired}",
        f"ray_switchyard_autoscaling_running_replicas{{{labels}}} {running}",
    ]
    lines += [f'ray_switchyard_autoscaling_cause{{{labels},cause="{c}"}} {int(c == cause)}' for c in CAUSES]
    return "\n".join(lines)


_GAUGE_TYPES = "\n".join(
    f"# HELP {name} -\n# TYPE {name} gauge"
    for name in (
        "ray_switchyard_kv_cache_usage_perc",
        "ray_switchyard_num_requests_running",
        "ray_switchyard_num_requests_waiting",
    )
)

# Node 1: two replicas of llama (one of them serving two tenants), and the Serve controller.
NODE_1 = "\n".join(
    [
        _GAUGE_TYPES,
        _replica("w1", "llama", 0.80, {"team-a": 3, "team-b": 1}, {"team-a": 2}),
        _replica("w2", "llama", 0.04, {"team-a": 3}, {"team-a": 1}),
        _controller("llama", target=2, desired=3, running=2, cause="queue"),
        "# TYPE ray_switchyard_router_requests_total counter",  # another of ours, with a model label
        f'ray_switchyard_router_requests_total{{{_RAY_LABELS},model="llama",endpoint="chat",tenant="a"}} 9',
    ]
)
# Node 2: the one replica of qwen, which has no autoscaling policy; no TYPE lines at all.
NODE_2 = _replica("w3", "qwen", 0.25, {"anonymous": 1}, {"anonymous": 0}) + "\n"


def _deployment(status: str, replicas: dict[ReplicaState, int], message: str = "") -> SimpleNamespace:
    return SimpleNamespace(status=status, status_trigger="AUTOSCALING", message=message, replica_states=replicas)


SERVE_STATUS = SimpleNamespace(
    applications={
        "chat": SimpleNamespace(
            status="RUNNING",
            deployments={
                "Router": _deployment("HEALTHY", {ReplicaState.RUNNING: 1}),
                "LLMServer:qwen": _deployment("HEALTHY", {ReplicaState.RUNNING: 1}),
                "LLMServer:llama": _deployment("UPSCALING", {ReplicaState.RUNNING: 2, ReplicaState.STARTING: 1}),
            },
        ),
        "batch": SimpleNamespace(
            status="RUNNING",
            deployments={"Router": _deployment("HEALTHY", {}), "LLMServer:mistral": _deployment("HEALTHY", {})},
        ),
    }
)


def test_figures_sum_over_replicas_and_tenants_and_keep_each_replicas_kv_usage() -> None:
    figures = collect_samples([NODE_1, NODE_2])
    llama, qwen = figures["llama"], figures["qwen"]
    assert (llama.num_requests_running, llama.num_requests_waiting) == (7, 3)
    assert sorted(llama.kv_usage) == [0.04, 0.80]
    assert (llama.target_replicas, llama.desired_replicas) == (2, 3)
    assert llama.autoscaling_cause == "queue"
    assert (qwen.num_requests_running, qwen.num_requests_waiting, qwen.kv_usage) == (1, 0, [0.25])
    assert (qwen.target_replicas, qwen.desired_replicas, qwen.autoscaling_cause) == (None, None, None)
    assert "mistral" not in figures


def test_one_row_per_model_deployment_with_unknown_figures_as_none() -> None:
    rows = model_rows(SERVE_STATUS, collect_samples([NODE_1, NODE_2]))
    assert [(row.app, row.model) for row in rows] == [("batch", "mistral"), ("chat", "llama"), ("chat", "qwen")]
    mistral, llama, qwen = rows
    assert llama == ModelRow(
        app="chat",
        model="llama",
        state="ready",
        running_replicas=2,
        starting_replicas=1,
        target_replicas=2,
        desired_replicas=3,
        num_requests_running=7,
        num_requests_waiting=3,
        kv_usage_mean=pytest.approx(0.42),
        kv_usage_max=0.80,
        autoscaling_cause="queue",
        deployment_status="UPSCALING",
        message="",
    )
    assert (mistral.state, mistral.running_replicas, mistral.num_requests_running, mistral.kv_usage_mean) == (
        "scaled_to_zero",
        0,
        None,
        None,
    )
    assert (qwen.state, qwen.target_replicas, qwen.kv_usage_max, qwen.autoscaling_cause) == ("ready", None, 0.25, None)


def test_the_table_shows_target_with_desired_kv_mean_with_max_and_dashes() -> None:
    table = render_table(model_rows(SERVE_STATUS, collect_samples([NODE_1, NODE_2])))
    assert table.splitlines() == [
        "APP    MODEL    STATE           RUNNING  STARTING  DESIRED  REQS-RUNNING  REQS-WAITING  KV-USAGE         AUTOSCALING",  # noqa: E501
        "batch  mistral  scaled_to_zero  0        0         -        -             -             -                -",
        "chat   llama    ready           2        1         2 (3)    7             3             0.42 (max 0.80)  queue",  # noqa: E501
        "chat   qwen     ready           1        0         -        1             0             0.25 (max 0.25)  -",
    ]


def test_a_failing_deployment_shows_its_status_and_serves_message() -> None:
    status = SimpleNamespace(
        applications={
            "chat": SimpleNamespace(
                status="DEPLOYING",
                deployments={"LLMServer:llama": _deployment("DEPLOY_FAILED", {}, "replica failed to start: OOM")},
            )
        }
    )
    rows = model_rows(status, {})
    assert rows[0].state == "deploy_failed"
    assert render_table(rows).splitlines()[-1] == "chat/llama: replica failed to start: OOM"


def test_the_names_matched_are_the_ones_recorded() -> None:
    autoscaling = {f"ray_{name}" for name in AUTOSCALING_METRIC_NAMES}
    assert {status_command._TARGET_REPLICAS, status_command._DESIRED_REPLICAS, status_command._CAUSE} <= autoscaling
    model = ModelConfig.model_validate({"name": "llama", "source": {"demo": "llama"}})
    assert model.deployment_name == f"{status_command.MODEL_DEPLOYMENT_PREFIX}llama"


# ---- token auth ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def auth_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Ray auth variables set and a home without a token, all restored after the test;
    returns where a test may write a token file."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "token"


def test_a_token_file_turns_token_auth_on(auth_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_token_auth_if_token_exists()
    assert "RAY_AUTH_MODE" not in status_command.os.environ  # no token anywhere
    auth_env.write_text("secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(auth_env))
    enable_token_auth_if_token_exists()
    assert status_command.os.environ["RAY_AUTH_MODE"] == "token"


def test_the_default_token_file_is_under_home(auth_env: Path) -> None:
    default = Path(status_command.os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir(parents=True)
    default.write_text("secret")
    enable_token_auth_if_token_exists()
    assert status_command.os.environ["RAY_AUTH_MODE"] == "token"


def test_an_explicit_auth_mode_is_kept(auth_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth_env.write_text("secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(auth_env))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    enable_token_auth_if_token_exists()
    assert status_command.os.environ["RAY_AUTH_MODE"] == "disabled"


# ---- the command, with the cluster faked ---------------------------------------------------------


def test_status_prints_the_table_or_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(status_command, "read_cluster", lambda address: (SERVE_STATUS, [NODE_1, NODE_2]))
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == [
        "chat", "llama", "ready", "2", "1", "2", "(3)", "7", "3", "0.42", "(max", "0.80)", "queue",
    ]  # fmt: skip
    assert cli.main(["status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in printed] == ["mistral", "llama", "qwen"]
    assert printed[0]["kv_usage_mean"] is None and printed[1]["desired_replicas"] == 3


def test_no_switchyard_app_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    router_only = SimpleNamespace(
        applications={"other": SimpleNamespace(deployments={"Router": _deployment("HEALTHY", {})})}
    )
    monkeypatch.setattr(status_command, "read_cluster", lambda address: (router_only, []))
    assert cli.main(["status"]) == 1
    assert "no Switchyard app is deployed" in capsys.readouterr().err


def test_no_local_cluster_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def no_cluster(address: str | None) -> None:
        raise ClusterUnavailableError("cannot connect to a Ray cluster: Could not find any running Ray instance.")

    monkeypatch.setattr(status_command, "read_cluster", no_cluster)
    assert cli.main(["status"]) == 1
    assert "switchyard status: cannot connect to a Ray cluster" in capsys.readouterr().err


def test_an_address_nobody_listens_on_exits_1_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port just freed, so almost surely closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli.main(["status", "--address", f"127.0.0.1:{port}"]) == 1  # fails before ray.init
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err


def test_an_unreadable_node_is_reported_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = [
        {"Alive": True, "NodeManagerAddress": "127.0.0.1", "MetricsExportPort": port},
        {"Alive": False, "NodeManagerAddress": "10.0.0.9", "MetricsExportPort": 8080},
    ]
    urls = status_command._metrics_urls(nodes)
    assert urls == [f"http://127.0.0.1:{port}/metrics"]
    assert status_command._read_metrics(urls[0]) is None
    assert f"skipping http://127.0.0.1:{port}/metrics" in capsys.readouterr().err
