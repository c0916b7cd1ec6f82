"""Monitoring on the native stack: Prometheus scrapes the model API, the Pushgateway and
Airflow's metrics (through the OTLP bridge), all through their real HTTP APIs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway

from chicago_crime.devtools import demo
from chicago_crime.monitoring import scrape

pytestmark = pytest.mark.integration
DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring/grafana/dashboards/chicago-crime.json"
#: Airflow metrics a running stack emits without any DAG run (scheduler and DAG processor
#: loops); tests/unit/test_monitoring_config.AIRFLOW_METRICS lists them with the dashboard's others.
ALWAYS_EMITTED = ("airflow_scheduler_heartbeat_total", "airflow_executor_open_slots",
                  "airflow_dag_processing_total_parse_time")


@pytest.fixture(scope="module")
def prometheus(stack_settings) -> str:
    return f"http://127.0.0.1:{stack_settings.prometheus_port}"


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prometheus: str, expr: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The result of ``expr`` once it is non-empty (Prometheus scrapes every 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_every_scrape_job_is_up(prometheus) -> None:
    for job in scrape.JOBS:
        result = wait_for(prometheus, f'up{{job="{job}"}} == 1')
        assert result, f"Prometheus does not scrape job {job}: {query(prometheus, 'up')}"


def test_predict_requests_are_counted_per_endpoint(prometheus, stack_settings) -> None:
    """Requests to /predict (answered or refused, with or without a champion) appear in
    Prometheus under the route template, from the API's own /metrics."""
    before = query(prometheus, 'sum(http_requests_total{job="model-api", handler="/predict"})')
    start = float(before[0]["value"][1]) if before else 0.0
    with httpx.Client(base_url=stack_settings.api_url, timeout=30) as api:
        codes = {api.post("/predict", json=demo.EXAMPLE_RECORD).status_code for _ in range(10)}
    assert codes <= {200, 503}, codes
    expr = f'sum(http_requests_total{{job="model-api", handler="/predict"}}) > {start}'
    assert wait_for(prometheus, expr), "the /predict requests never reached Prometheus"
    latency = wait_for(prometheus, 'http_request_duration_seconds_count'
                                   '{job="model-api", handler="/predict"}')
    assert latency, "no latency histogram for /predict"


def _health_requests(api: httpx.Client) -> float:
    """``http_requests_total`` for ``GET /health`` (200) in one scrape of the API's /metrics."""
    body = api.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("http_requests_total{") and 'handler="/health"' in line
               and 'method="GET"' in line and 'status="200"' in line)


def test_metrics_add_up_every_api_worker(stack_settings) -> None:
    """/metrics is the aggregate of the API's ``API_WORKERS`` processes (multiprocess mode):
    N requests to /health, whichever worker answers them, all show in one scrape, and
    successive scrapes never go back (no false counter reset for ``rate()``)."""
    n = 40
    # a new connection per request: the workers share the socket, so both answer some
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=stack_settings.api_url, timeout=30, limits=fresh) as api:
        before = _health_requests(api)
        for _ in range(n):
            assert api.get("/health").status_code == 200
        seen = [_health_requests(api) for _ in range(6)]
    assert stack_settings.api_workers >= 2, "the point is several workers"
    assert seen[0] - before >= n, (before, seen)
    assert seen == sorted(seen), seen


def test_pushed_gauges_keep_their_job_label(prometheus, stack_settings) -> None:
    """A gauge pushed to the Pushgateway reaches Prometheus with the pusher's job label
    (honor_labels), the way the monitoring DAG's gauges do."""
    job, registry = f"integration_{uuid.uuid4().hex[:8]}", CollectorRegistry()
    Gauge("chicago_crime_integration_probe", "A throwaway gauge of the integration test.",
          registry=registry).set(42)
    push_to_gateway(stack_settings.pushgateway_url, job=job, registry=registry)
    try:
        result = wait_for(prometheus, f'chicago_crime_integration_probe{{job="{job}"}}')
        assert result and float(result[0]["value"][1]) == 42.0
    finally:
        delete_from_gateway(stack_settings.pushgateway_url, job=job)


def test_airflow_metrics_reach_prometheus(prometheus) -> None:
    """The scheduler's heartbeat and other always-on Airflow metrics arrive through the
    OTLP bridge."""
    for name in ALWAYS_EMITTED:
        result = wait_for(prometheus, f'{name}{{job="airflow"}}', timeout=120)
        assert result, f"{name} never reached Prometheus"
    beats = wait_for(prometheus, 'sum(airflow_scheduler_heartbeat_total{job="airflow"}) > 1')
    assert beats, "the scheduler's heartbeat counter does not grow"


def test_every_dashboard_query_runs_in_prometheus(prometheus) -> None:
    """Grafana is Compose-only, so its queries are run here against the real Prometheus (the
    Grafana variable replaced): each is valid PromQL, and the API's request rate and the
    scheduler's heartbeat panels have data."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    with_data = {}
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            with_data[panel["title"]] = bool(query(prometheus, expr)) or \
                with_data.get(panel["title"], False)
    for title in ("Requests per endpoint", "Scheduler heartbeats per minute",
                  "Executor open slots", "Scrape targets up"):
        assert with_data[title], f"panel {title!r} shows no data"
