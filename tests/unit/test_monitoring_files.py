"""monitoring/: the Grafana dashboard, the alert rules and the scrape configs name only metrics we
export, parse, and pass promtool; the alerts fire (and their signals read 0, not nothing) as meant."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from autoscaling.metrics import AUTOSCALING_METRIC_NAMES
from deployments.observability.router_metrics import ROUTER_METRICS
from engine.metrics.definitions import ENGINE_METRICS, MetricSpec
from monitoring.queries import ALERTS, DASHBOARD, MONITORING_DIR, alert_rules, dashboard_queries, to_promql

PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus" / "prometheus.yml"
POD_MONITOR = MONITORING_DIR.parent / "manifests" / "kuberay" / "podmonitor.yaml"
ALL_VALUES = {"model": ".*", "tenant": ".*"}  # the dashboard's "All"

REQUIRED_PANELS = {
    "Request rate",
    "Error rate (4xx and 5xx)",
    "429s by reason",
    "Time to first token",
    "Inter-token latency",
    "End-to-end request latency",
    "Tokens per second",
    "Requests running and waiting",
    "KV cache usage",
    "Prefix cache hit rate",
    "Preemptions",
    "Replicas",
    "Cold starts",
    "Cold start wait p90",
    "Tenant tokens per second",
    "Tenant spend (USD per hour)",
    "Tenant spend, last hour",
    "Healthy replicas per deployment",
}
ALERT_NAMES = {
    "SwitchyardTTFTHigh",
    "SwitchyardErrorRateHigh",
    "SwitchyardKVCachePinned",
    "SwitchyardRequestsWaitingAtMaxReplicas",
    "SwitchyardModelFailingToStart",
}

# Words of PromQL that can stand where a metric name would (functions are told apart by their "(").
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")


def exported_names(spec: MetricSpec) -> set[str]:
    """The names Ray's exporter serves `spec` under."""
    name = "ray_" + spec.name
    if spec.kind == "counter":
        return {name + "_total"}
    if spec.kind == "histogram":
        return {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {name}


EXPORTED = (
    {name for spec in (*ENGINE_METRICS, *ROUTER_METRICS) for name in exported_names(spec)}
    | {"ray_" + name for name in AUTOSCALING_METRIC_NAMES}
    | {"ray_serve_deployment_replica_healthy"}
)


def metric_names(promql: str) -> set[str]:
    """The metric names `promql` selects: identifiers left once strings, grouping clauses, label
    matchers and ranges are cut out, other than function names (followed by "(") and keywords."""
    for pattern, kept in ((_STRING, '""'), (_GROUPING, ""), (_MATCHERS, "{}"), (_RANGE, "[]")):
        promql = pattern.sub(kept, promql)
    return {name for name in _IDENTIFIER.findall(promql) if name.lower() not in _KEYWORDS}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: `make test` installs it (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    promql = (
        'histogram_quantile(0.9, sum by (le, model) (rate(a_bucket{model=~"$m", le!="x"}[1m])))'
        " or on (model) sum by (model) (increase(b_total[1h])) * 0 > bool 1 unless c"
    )
    assert metric_names(promql) == {"a_bucket", "b_total", "c"}


def test_the_extractor_catches_a_misspelt_metric_name() -> None:
    promql = 'sum by (model) (rate(ray_switchyard_generation_token_total{model=~".*"}[1m]))'
    assert metric_names(promql) - EXPORTED == {"ray_switchyard_generation_token_total"}


def test_the_dashboard_has_every_required_panel() -> None:
    titles = {query.panel for query in dashboard_queries()}
    assert REQUIRED_PANELS - titles == set()


def test_the_dashboard_reads_a_chosen_datasource_and_its_model_and_tenant_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = {
        "model": "label_values(ray_switchyard_num_requests_running, model)",
        "tenant": "label_values(ray_switchyard_router_requests_total, tenant)",
    }
    for name, query in queries.items():
        variable = variables[name]
        assert variable["definition"] == variable["query"]["query"] == query
        assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (True, True, ".*")
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_dashboard_expression_names_only_exported_metrics() -> None:
    unknown = {
        (query.panel, query.ref_id): metric_names(to_promql(query.expr, ALL_VALUES, "1m")) - EXPORTED
        for query in dashboard_queries()
    }
    assert {key: names for key, names in unknown.items() if names} == {}


def test_every_switchyard_selector_filters_by_the_model_variable_and_rates_use_the_rate_interval() -> None:
    for query in dashboard_queries():
        for selector in re.findall(r"ray_switchyard_\w+\{[^}]*\}", query.expr):
            assert 'model=~"$model"' in selector, (query.panel, selector)
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", query.expr):
            assert window == "$__rate_interval", (query.panel, window)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{number}", "expr": to_promql(query.expr, ALL_VALUES, "1m")}
        for number, query in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_to_promql_fills_in_variables_and_refuses_unknown_ones() -> None:
    expr = 'rate(x{model=~"$model", tenant=~"${tenant}"}[$__rate_interval]) + increase(y[$__range]) + z[$__interval]'
    assert to_promql(expr, {"model": "(a|b)", "tenant": ".*"}, "2m") == (
        'rate(x{model=~"(a|b)", tenant=~".*"}[2m]) + increase(y[2m]) + z[2m]'
    )
    assert to_promql("increase(y[$__range])", {"__range": "1h"}, "1m") == "increase(y[1h])"
    with pytest.raises(ValueError, match=r"\$modle"):
        to_promql('x{model=~"$modle"}', ALL_VALUES, "1m")


def test_the_alert_rules_pass_promtool() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheus_config_passes_promtool_and_scrapes_rays_export_port() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["static_configs"] == [{"targets": ["localhost:8080"]}]


def test_every_alert_compares_its_signal_and_names_only_exported_metrics() -> None:
    rules = alert_rules()
    assert {rule.name for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert rule.signal in rule.expr, rule.name
        assert rule.expr != rule.signal, rule.name  # the comparison is in expr
        assert metric_names(rule.expr) - EXPORTED == set(), rule.name
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for raw in (rule for group in groups for rule in group["rules"]):
        assert raw["labels"]["severity"] in {"warning", "critical"}, raw["alert"]
        assert raw["annotations"]["summary"], raw["alert"]
        assert "{{ $value" in raw["annotations"]["description"], raw["alert"]


def _series(name: str, labels: str, values: str, worker: str = "w1") -> dict[str, str]:
    """One input series for `promtool test rules`, labelled with its process as Ray labels it."""
    return {"series": f'{name}{{{labels}, WorkerId="{worker}"}}', "values": values}


def _firing(alert: str, model: str, severity: str) -> dict[str, object]:
    labels = f'ALERTS{{alertname="{alert}", alertstate="firing", model="{model}", severity="{severity}"}}'
    return {"labels": labels, "value": 1}


def _alert_input_series() -> list[dict[str, str]]:
    """Twenty minutes of one series a minute: a model per alert to fire, and near misses."""
    requests, waiting = "ray_switchyard_router_requests_total", "ray_switchyard_num_requests_waiting"
    gauges = "ray_switchyard_autoscaling_{}_replicas"
    return [
        # "bad": 10% 503s; "ok": no 5xx at all, so its error share must read 0 rather than nothing.
        _series(requests, 'model="bad", status_code="200"', "0+54x20"),
        _series(requests, 'model="bad", status_code="503"', "0+6x20"),
        _series(requests, 'model="ok", status_code="200"', "0+60x20"),
        # "full": requests wait, every targeted replica runs and the target is max_replicas.
        _series(waiting, 'model="full", tenant="t"', "3x20"),
        *(_series(gauges.format(kind), 'model="full"', "2x20") for kind in ("running", "target", "desired", "max")),
        # "scaling": requests wait but the autoscaler may add a third replica: no alert.
        _series(waiting, 'model="scaling", tenant="t"', "3x20"),
        _series(gauges.format("running"), 'model="scaling"', "2x20"),
        _series(gauges.format("target"), 'model="scaling"', "2x20"),
        _series(gauges.format("desired"), 'model="scaling"', "2x20"),
        _series(gauges.format("max"), 'model="scaling"', "3x20"),
        # "stuck": one replica targeted, none running.
        _series(gauges.format("target"), 'model="stuck"', "1x20"),
        _series(gauges.format("running"), 'model="stuck"', "0x20"),
        _series(gauges.format("desired"), 'model="stuck"', "1x20"),
        # "full" also has one replica of two whose KV cache stays over 95% full.
        _series("ray_switchyard_kv_cache_usage_perc", 'model="full"', "0.97x20"),
        _series("ray_switchyard_kv_cache_usage_perc", 'model="full"', "0.2x20", worker="w2"),
    ]


def test_the_alerts_fire_as_described_and_signals_read_zero_without_errors(tmp_path: Path) -> None:
    error_signal = next(rule.signal for rule in alert_rules() if rule.name == "SwitchyardErrorRateHigh")
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _alert_input_series(),
                "promql_expr_test": [
                    {
                        "expr": error_signal,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{model="bad"}', "value": 0.1},
                            {"labels": '{model="ok"}', "value": 0},
                        ],
                    },
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": "15m",
                        "exp_samples": [
                            _firing("SwitchyardErrorRateHigh", "bad", "critical"),
                            _firing("SwitchyardKVCachePinned", "full", "warning"),
                            _firing("SwitchyardRequestsWaitingAtMaxReplicas", "full", "warning"),
                            _firing("SwitchyardModelFailingToStart", "stuck", "critical"),
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pod_monitor_scrapes_every_kuberay_pods_metrics_port() -> None:
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["interval"]) == ("metrics", "15s")
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "targetLabel": "ray_io_cluster",
    } in endpoint["relabelings"]
