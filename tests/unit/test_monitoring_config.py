"""Static checks of the monitoring configuration (no Prometheus or Grafana running).

The scrape file is validated by Debian's ``promtool`` (the same Prometheus release the native
stack runs) for both stacks' target sets; every query of the Grafana dashboard must name a
metric that something exports: the model API (its real registry), the gauges the monitoring job
pushes to the Pushgateway, or Airflow through the OTLP bridge.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chicago_crime.config import load_settings
from chicago_crime.monitoring import scrape
from chicago_crime.serve.metrics import ServerMetrics, instrument

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "chicago-crime.json"

#: The gauges the monitoring DAG pushes (job ``monitor_model``); docs/monitoring.md lists them.
PUSHED_GAUGES = {
    "chicago_crime_drift_psi", "chicago_crime_monthly_roc_auc", "chicago_crime_monthly_ece",
    "chicago_crime_monitor_last_run_timestamp_seconds", "chicago_crime_retrain_requested",
}
#: Airflow's metrics as the OTLP bridge names them (the integration test sees the first three
#: on the running stack; the others appear once tasks and DAG runs finish).
AIRFLOW_METRICS = {
    "airflow_scheduler_heartbeat_total", "airflow_executor_open_slots",
    "airflow_dag_processing_total_parse_time", "airflow_ti_finish_total",
    "airflow_dagrun_duration_success_sum", "airflow_dagrun_duration_success_count",
}
#: Prometheus' own series.
PROMETHEUS_METRICS = {"up"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "time", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "bool", "offset", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "delta",
    "deriv", "changes", "resets", "vector", "scalar", "label_replace", "absent",
}


def api_metric_names() -> set[str]:
    """Sample names the model API really exports (its metrics on an instrumented app)."""
    metrics = ServerMetrics()
    app = FastAPI()

    @app.get("/predict")
    def predict() -> dict[str, bool]:
        return {"ok": True}

    instrument(app, metrics)
    metrics.model_loaded("chicago_arrest", "3", "run", "sklearn")
    metrics.record_predictions("3", [True, False])
    with TestClient(app) as client:
        client.get("/predict")
    text = metrics.exposition()[0].decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, groupings, ranges, strings and
    Grafana variables removed; a name followed by ``(`` is a function)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\()?)", expr):
        if m.group(1) is None and m.group(0) not in PROMQL_WORDS:
            names.add(m.group(0))
    return names


def panels() -> list[dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        out += [panel, *panel.get("panels", [])]
    return [p for p in out if p["type"] != "row"]


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make install-native` installs Debian's prometheus")
    return tool


def test_scrape_config_is_valid_for_compose_and_native(tmp_path, monkeypatch) -> None:
    """promtool accepts the one scrape file with Compose's target files and with the native
    stack's (rendered from the settings)."""
    promtool = _promtool()
    compose = subprocess.run([promtool, "check", "config", str(scrape.SCRAPE_CONFIG)],
                             capture_output=True, text=True)
    assert compose.returncode == 0, compose.stdout + compose.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("PROMETHEUS_PORT", "19090")
    config = scrape.write_native_config(tmp_path, load_settings())
    native = subprocess.run([promtool, "check", "config", str(config)],
                            capture_output=True, text=True)
    assert native.returncode == 0, native.stdout + native.stderr
    targets = json.loads((tmp_path / "targets" / "prometheus.json").read_text())
    assert targets[0]["targets"] == ["127.0.0.1:19090"]


def test_every_job_has_target_files_for_both_stacks() -> None:
    config = yaml.safe_load(scrape.SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(scrape.JOBS)
    assert jobs["pushgateway"]["honor_labels"] is True
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    for name, job in jobs.items():
        (files,) = [sd["files"] for sd in job["file_sd_configs"]]
        assert files == [f"targets/{name}.json"]
        (group,) = json.loads((scrape.COMPOSE_TARGETS / f"{name}.json").read_text())
        for target in group["targets"]:
            host, port = target.rsplit(":", 1)
            assert host in compose, f"{name}: {host} is not a Compose service"
            # the service's own healthcheck probes the port Prometheus scrapes
            probe = " ".join(compose[host]["healthcheck"]["test"])
            assert f":{port}/" in probe, f"{name}: {host} does not listen on {port}"


def test_dashboard_queries_name_exported_metrics() -> None:
    known = api_metric_names() | PUSHED_GAUGES | AIRFLOW_METRICS | PROMETHEUS_METRICS
    unknown = {}
    for panel in panels():
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            if names - known:
                unknown[panel["title"]] = sorted(names - known)
    assert not unknown, f"queries name metrics nothing exports: {unknown}"


def test_dashboard_covers_the_issue_and_uses_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    used: set[str] = set()
    for panel in panels():
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
            used |= metric_names(target["expr"])
    for needed in ("http_requests_total", "http_request_duration_seconds_bucket",
                   "predictions_total", "model_version", "chicago_crime_drift_psi",
                   "chicago_crime_monthly_roc_auc", *PUSHED_GAUGES,
                   "airflow_scheduler_heartbeat_total"):
        assert needed in used, f"no panel shows {needed}"
    drift = next(p for p in panels() if "chicago_crime_drift_psi" in p["targets"][0]["expr"])
    assert "by (feature)" in drift["targets"][0]["expr"]


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "chicago-crime.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[path] == "./monitoring/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    assert "monitoring" in grafana["profiles"]


def test_docs_list_the_pushed_gauges() -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text.split("## Dashboards", 1)[1].split("\n## ", 1)[0]
    for name in PUSHED_GAUGES | {"http_requests_total", "predictions_total", "model_version"}:
        assert f"`{name}" in section, name


def test_promql_name_extraction() -> None:
    assert metric_names('sum by (handler, le) (rate(x_bucket{job="a", s=~"5.."}[$__rate_interval]))'
                        ) == {"x_bucket"}
    assert metric_names("time() - max(last_run)") == {"last_run"}


def test_native_stack_wires_airflow_to_the_bridge(monkeypatch) -> None:
    """Every Airflow program exports its metrics to the bridge's port; the model server holds
    no Grafana password; the Pushgateway URL follows its port."""
    from chicago_crime.devtools import stack
    from chicago_crime.monitoring.otlp_bridge import airflow_metrics_env

    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                        "AIRFLOW_JWT_SECRET": "j" * 64, "AIRFLOW_FERNET_KEY": "f",
                        "GRAFANA_ADMIN_PASSWORD": "g", "OTLP_BRIDGE_PORT": "14318",
                        "PUSHGATEWAY_PORT": "19091"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AIRFLOW__METRICS__OTEL_ON", raising=False)
    envs = stack.program_envs(load_settings(), None)
    wanted = airflow_metrics_env("http://127.0.0.1:14318")
    for name in stack.AIRFLOW_SERVICES:
        assert {k: envs[name][k] for k in wanted} == wanted, name
    assert envs["airflow-worker"]["PUSHGATEWAY_URL"] == "http://127.0.0.1:19091"
    assert all("GRAFANA_ADMIN_PASSWORD" not in env for env in envs.values())


def test_compose_airflow_exports_to_the_bridge_like_the_native_stack() -> None:
    """The Airflow services get the same metric settings as natively, pointing at the
    otlp-bridge service (OTEL_ON from .env / make monitoring)."""
    from chicago_crime.monitoring.otlp_bridge import airflow_metrics_env

    services = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    wanted = airflow_metrics_env("http://otlp-bridge:4318")
    wanted["AIRFLOW__METRICS__OTEL_ON"] = "${AIRFLOW__METRICS__OTEL_ON:-False}"
    for name in ("airflow-scheduler", "airflow-worker", "airflow-dag-processor"):
        env = services[name]["environment"]
        assert {k: str(env.get(k)) for k in wanted} == wanted, name
