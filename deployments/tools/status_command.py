"""`switchyard status`: per model of the running Switchyard app(s), what it is doing now.

    switchyard status [--address <gcs host:port>] [--json]

    APP   MODEL  STATE  RUNNING  STARTING  DESIRED  REQS-RUNNING  REQS-WAITING  KV-USAGE         AUTOSCALING
    chat  llama  ready  2        0         2 (3)    7             3             0.42 (max 0.80)  queue

State and replica counts come from the Serve controller (`serve.status()`). Requests, KV usage and
the last autoscaling decision come from Ray's metrics export port on every alive node, so they are
as of Ray's last metrics report (every few seconds); the gauges of a replica that died may linger
there for a while. `-` marks a figure nobody reports: a model scaled to zero runs no engine, a
model without Switchyard's autoscaling policy records no decisions. DESIRED is the target the
policy set, with what the load calls for in parentheses when that differs. Metrics carry only the
model's name, so two apps serving the same model name share its figures.

Parsing and rendering are pure functions (`collect_samples`, `model_rows`, `render_table`); the
reads from Ray (`read_cluster`) are a thin layer over them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.metrics.definitions import KV_CACHE_USAGE, NUM_REQUESTS_RUNNING, NUM_REQUESTS_WAITING

if TYPE_CHECKING:
    from deployments.ingress.model_states import ModelState

__all__ = [
    "ClusterUnavailableError",
    "ModelFigures",
    "ModelRow",
    "add_status_parser",
    "collect_samples",
    "enable_token_auth_if_token_exists",
    "model_rows",
    "read_cluster",
    "render_table",
    "run_status",
]

# `ModelConfig.deployment_name` is f"{MODEL_DEPLOYMENT_PREFIX}{name}" (a test pins the two together).
MODEL_DEPLOYMENT_PREFIX = "LLMServer:"

# Ray's exporter prefixes application metrics with `ray_`. The autoscaling names are among the
# ones `autoscaling.metrics` records (a test pins them to its AUTOSCALING_METRIC_NAMES).
_REQUESTS_RUNNING = f"ray_{NUM_REQUESTS_RUNNING.name}"
_REQUESTS_WAITING = f"ray_{NUM_REQUESTS_WAITING.name}"
_KV_USAGE = f"ray_{KV_CACHE_USAGE.name}"
_TARGET_REPLICAS = "ray_switchyard_autoscaling_target_replicas"
_DESIRED_REPLICAS = "ray_switchyard_autoscaling_desired_replicas"
_CAUSE = "ray_switchyard_autoscaling_cause"

_METRICS_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 5.0
# Deployment statuses the STATE column shows instead of the model's state: replica counts alone
# would call a deployment whose replicas fail to start "scaled_to_zero".
_PROBLEM_STATUSES = ("UNHEALTHY", "DEPLOY_FAILED")


class ClusterUnavailableError(Exception):
    """No Ray cluster answers at the address given (or none runs locally)."""


@dataclass
class ModelFigures:
    """One model's figures from the metrics export; None where no sample was seen."""

    num_requests_running: float | None = None  # summed over replicas and tenants
    num_requests_waiting: float | None = None  # summed over replicas and tenants
    kv_usage: list[float] = field(default_factory=list)  # one sample per replica, in [0, 1]
    target_replicas: float | None = None  # what the policy set as Serve's target
    desired_replicas: float | None = None  # what the load calls for, before scaling delays
    causes: dict[str, float] = field(default_factory=dict)  # cause -> summed 0/1 gauge

    @property
    def autoscaling_cause(self) -> str | None:
        """The cause whose gauge is set; None when no decision was recorded."""
        set_causes = {cause: value for cause, value in self.causes.items() if value > 0}
        return max(set_causes, key=set_causes.__getitem__) if set_causes else None


@dataclass(frozen=True)
class ModelRow:
    """One line of `switchyard status`; None where a figure is unknown."""

    app: str
    model: str
    state: str  # ready | starting | scaled_to_zero, or the deployment's problem status (unhealthy, ...)
    running_replicas: int
    starting_replicas: int
    target_replicas: int | None
    desired_replicas: int | None
    num_requests_running: int | None
    num_requests_waiting: int | None
    kv_usage_mean: float | None
    kv_usage_max: float | None
    autoscaling_cause: str | None
    deployment_status: str  # Serve's: HEALTHY, UPDATING, UPSCALING, ...
    message: str  # Serve's message about the deployment; often empty

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- parsing: metric texts -> per-model figures -------------------------------------------------


def collect_samples(texts: Iterable[str]) -> dict[str, ModelFigures]:
    """Per model, the Switchyard series in Prometheus exposition `texts` (one per node).

    Sums over every label but `model` (and `cause`); KV usage keeps one value per replica.
    Raises ValueError for a text that is not in the exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    figures: dict[str, ModelFigures] = {}
    for text in texts:
        try:
            samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        except ValueError as error:
            raise ValueError(f"a node's metrics are not in Prometheus' text format: {error}") from error
        for sample in samples:  # by sample name: a gauge's family may be named without its suffix
            model = sample.labels.get("model")
            if model is not None:
                _add(figures.setdefault(model, ModelFigures()), sample.name, sample.labels, sample.value)
    return figures


_SUMMED = {
    _REQUESTS_RUNNING: "num_requests_running",
    _REQUESTS_WAITING: "num_requests_waiting",
    _TARGET_REPLICAS: "target_replicas",
    _DESIRED_REPLICAS: "desired_replicas",
}


def _add(figures: ModelFigures, name: str, labels: Mapping[str, str], value: float) -> None:
    if name == _KV_USAGE:
        figures.kv_usage.append(value)
    elif name == _CAUSE and "cause" in labels:
        figures.causes[labels["cause"]] = figures.causes.get(labels["cause"], 0.0) + value
    elif name in _SUMMED:
        attribute = _SUMMED[name]
        setattr(figures, attribute, (getattr(figures, attribute) or 0.0) + value)


# ---- rows: Serve's status + figures -> one row per model -----------------------------------------


class _DeploymentStatus(Protocol):
    status: Any  # DeploymentStatus (a str enum)
    message: str
    replica_states: Mapping[Any, int]  # ReplicaState -> count


class _ApplicationStatus(Protocol):
    deployments: Mapping[str, _DeploymentStatus]


class _ServeStatus(Protocol):
    applications: Mapping[str, _ApplicationStatus]


def model_rows(serve_status: _ServeStatus, figures: Mapping[str, ModelFigures]) -> list[ModelRow]:
    """One row per `LLMServer:<model>` deployment of every app, by app then model."""
    from deployments.ingress.model_states import model_state  # imports ray.serve

    rows = []
    for app_name, application in sorted(serve_status.applications.items()):
        for deployment_name, deployment in sorted(application.deployments.items()):
            if not deployment_name.startswith(MODEL_DEPLOYMENT_PREFIX):
                continue  # the Router
            model = deployment_name.removeprefix(MODEL_DEPLOYMENT_PREFIX)
            replicas = model_state(deployment.replica_states)
            status = _enum_value(deployment.status)
            state = status.lower() if status in _PROBLEM_STATUSES else replicas.state
            figures_of_model = figures.get(model, ModelFigures())
            rows.append(_row(app_name, model, state, replicas, figures_of_model, status, deployment.message))
    return rows


def _row(
    app: str, model: str, state: str, replicas: ModelState, figures: ModelFigures, status: str, message: str
) -> ModelRow:
    kv_usage = figures.kv_usage
    return ModelRow(
        app=app,
        model=model,
        state=state,
        running_replicas=replicas.running_replicas,
        starting_replicas=replicas.starting_replicas,
        target_replicas=_count(figures.target_replicas),
        desired_replicas=_count(figures.desired_replicas),
        num_requests_running=_count(figures.num_requests_running),
        num_requests_waiting=_count(figures.num_requests_waiting),
        kv_usage_mean=sum(kv_usage) / len(kv_usage) if kv_usage else None,
        kv_usage_max=max(kv_usage) if kv_usage else None,
        autoscaling_cause=figures.autoscaling_cause,
        deployment_status=status,
        message=message,
    )


def _count(value: float | None) -> int | None:
    return None if value is None else round(value)


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


# ---- rendering -----------------------------------------------------------------------------------

_COLUMNS = (
    "APP", "MODEL", "STATE", "RUNNING", "STARTING", "DESIRED",
    "REQS-RUNNING", "REQS-WAITING", "KV-USAGE", "AUTOSCALING",
)  # fmt: skip


def render_table(rows: list[ModelRow]) -> str:
    """The rows as a left-aligned table with a header, columns two spaces apart; then Serve's
    message for each deployment in trouble."""
    cells = [list(_COLUMNS)] + [_cells(row) for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines += [f"{row.app}/{row.model}: {row.message}" for row in rows if row.message and _in_trouble(row)]
    return "\n".join(lines)


def _cells(row: ModelRow) -> list[str]:
    return [
        row.app,
        row.model,
        row.state,
        str(row.running_replicas),
        str(row.starting_replicas),
        _desired(row.target_replicas, row.desired_replicas),
        _or_dash(row.num_requests_running),
        _or_dash(row.num_requests_waiting),
        _kv_usage(row.kv_usage_mean, row.kv_usage_max),
        row.autoscaling_cause or "-",
    ]


def _desired(target: int | None, desired: int | None) -> str:
    if target is None:
        return "-" if desired is None else f"- ({desired})"
    return str(target) if desired is None or desired == target else f"{target} ({desired})"


def _kv_usage(mean: float | None, maximum: float | None) -> str:
    return "-" if mean is None or maximum is None else f"{mean:.2f} (max {maximum:.2f})"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _in_trouble(row: ModelRow) -> bool:
    return row.deployment_status in _PROBLEM_STATUSES


# ---- reading the cluster -------------------------------------------------------------------------


def enable_token_auth_if_token_exists() -> None:
    """Set RAY_AUTH_MODE=token when it is unset and a Ray auth token is at hand.

    Ray 2.60 turns token authentication on for new local clusters; a client must then run with
    RAY_AUTH_MODE=token or the cluster refuses it ("Missing authentication token"). `ray.init`
    does this by itself only for `address="auto"`; doing it here, before Ray is imported, covers
    `--address` too and needs nothing set on a fresh machine. Where Ray looks for the token, as
    its AuthenticationTokenLoader does: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names,
    else ~/.ray/auth_token (`ray._private.authentication.authentication_token_setup`).
    """
    if "RAY_AUTH_MODE" in os.environ:
        return  # set explicitly, to token or disabled: respect it
    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_path.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def read_cluster(address: str | None) -> tuple[Any, list[str]]:
    """Serve's status and every alive node's metrics text. Raises ClusterUnavailableError."""
    _check_reachable(address)
    import ray
    from ray import serve
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address or "auto", namespace="serve", logging_level="ERROR")
    except (ConnectionError, AuthenticationError) as error:
        raise ClusterUnavailableError(f"cannot connect to a Ray cluster: {error}") from error
    try:
        return serve.status(), [text for text in map(_read_metrics, _metrics_urls(ray.nodes())) if text is not None]
    finally:
        ray.shutdown()  # disconnects this driver; the cluster runs on


def _check_reachable(address: str | None) -> None:
    """Fail fast on an explicit host:port nobody listens on: `ray.init` would retry for minutes."""
    if address in (None, "", "auto"):
        return  # ray.init finds the local cluster, or raises ConnectionError at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; let Ray judge it
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterUnavailableError(f"no Ray cluster answers at {address}: {error}") from error


def _metrics_urls(nodes: list[dict[str, Any]]) -> list[str]:
    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in nodes
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


def _read_metrics(url: str) -> str | None:
    """The text at `url`; None (reported on stderr) when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=_METRICS_TIMEOUT_S) as response:
            return response.read().decode()
    except (OSError, ValueError) as error:  # URLError, timeouts and refusals are OSErrors
        print(f"switchyard status: skipping {url}: {error}", file=sys.stderr)
        return None


# ---- the command ---------------------------------------------------------------------------------


def add_status_parser(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="state, replicas, load and autoscaling of each deployed model")
    status.add_argument("--address", default=None, help="Ray cluster address (GCS host:port); default: the local one")
    status.add_argument("--json", action="store_true", help="print a JSON list, one object per model")


def run_status(args: argparse.Namespace) -> int:
    enable_token_auth_if_token_exists()  # before Ray is imported and reads its config
    try:
        serve_status, texts = read_cluster(args.address)
        rows = model_rows(serve_status, collect_samples(texts))
    except (ClusterUnavailableError, ValueError) as error:
        print(f"switchyard status: {error}", file=sys.stderr)
        return 1
    if not rows:
        print("switchyard status: no Switchyard app is deployed (no LLMServer: deployment)", file=sys.stderr)
        return 1
    print(json.dumps([row.to_json() for row in rows], indent=2) if args.json else render_table(rows))
    return 0
