"""Every PromQL expression in monitoring/: the Grafana dashboard's panel queries and the alert rules,
read from their files, and Grafana's variables substituted so an expression can be sent to
Prometheus' HTTP API (what the tests do, after a traffic run).

    for query in dashboard_queries():
        promql = to_promql(query.expr, {"model": ".*", "tenant": ".*"}, rate_interval="1m")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ALERTS", "DASHBOARD", "AlertRule", "PanelQuery", "alert_rules", "dashboard_queries", "to_promql"]

MONITORING_DIR = Path(__file__).parent
DASHBOARD = MONITORING_DIR / "grafana" / "switchyard.json"
ALERTS = MONITORING_DIR / "prometheus" / "alerts.yml"

# `$name` or `${name}`: a Grafana variable in an expression.
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one dashboard panel."""

    panel: str  # the panel's title
    ref_id: str  # the target's refId within its panel: A, B, ...
    expr: str  # PromQL with Grafana's variables ($model, $__rate_interval, ...) still in it


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule of a Prometheus rule file."""

    name: str
    expr: str  # the condition: `signal` compared with a threshold
    signal: str  # the `signal` annotation: the quantity `expr` compares, without the comparison
    for_: str  # how long `expr` must hold before the alert fires, e.g. "5m" ("0s" when not given)


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every target's expression of every panel of the Grafana dashboard at `path`, in the file's
    order, including the panels nested in collapsed rows."""
    dashboard = json.loads(Path(path).read_text())
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in _walk(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk(panel.get("panels", []))


def alert_rules(path: Path = ALERTS) -> list[AlertRule]:
    """Every alerting rule (recording rules are skipped) of the Prometheus rule file at `path`.
    Raises ValueError naming an alert that has no `signal` annotation."""
    groups = yaml.safe_load(Path(path).read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    for rule in rules:
        if "signal" not in rule.get("annotations", {}):
            raise ValueError(f"alert {rule['alert']} has no signal annotation")
    return [
        AlertRule(rule["alert"], rule["expr"], rule["annotations"]["signal"], rule.get("for", "0s"))
        for rule in rules
    ]


def to_promql(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    """`expr` with Grafana's variables replaced, written `$name` or `${name}`: the dashboard's own
    from `variables` (e.g. {"model": ".*"}, the "All" value), `$__rate_interval` by `rate_interval`
    (e.g. "1m"), and `$__interval` and `$__range` by `rate_interval` too unless `variables` names
    them (an instant query has no step or time range of its own). Raises ValueError on any other
    variable, so that a misspelt one cannot reach Prometheus."""
    values = {"__interval": rate_interval, "__range": rate_interval, **variables, "__rate_interval": rate_interval}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)
