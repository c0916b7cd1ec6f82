"""The OTLP bridge fed by the OpenTelemetry SDK's own OTLP/HTTP exporter (the one Airflow
builds), read back as Prometheus' text format over real HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from prometheus_client.parser import text_string_to_metric_families

from chicago_crime.monitoring.otlp_bridge import (
    airflow_metrics_env,
    make_server,
    prometheus_name,
)


@pytest.fixture
def bridge() -> Iterator[str]:
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _provider(url: str, monkeypatch: pytest.MonkeyPatch, service: str) -> MeterProvider:
    """A meter provider configured the way the stack configures Airflow's processes."""
    for key, value in airflow_metrics_env(url).items():
        monkeypatch.setenv(key, value)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=60_000)
    return MeterProvider(metric_readers=[reader], views=[View(
        instrument_type=Histogram, aggregation=ExponentialBucketHistogramAggregation())])


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_airflow_style_metrics_reach_prometheus_format(bridge, monkeypatch) -> None:
    """Counters from two processes add up (delta), timers become _count/_sum, gauges keep the
    last value, and attributes become labels."""
    first = _provider(bridge, monkeypatch, "scheduler")
    second = _provider(bridge, monkeypatch, "worker")
    for provider in (first, second):
        meter = provider.get_meter("airflow")
        meter.create_counter("airflow.ti.finish").add(2, {"dag_id": "etl", "state": "success"})
        meter.create_histogram("airflow.dag.etl.duration").record(1.5)
        provider.force_flush()
    # a second export of the same process: only what was counted since the first is sent
    meter = first.get_meter("airflow")
    meter.create_counter("airflow.ti.finish").add(1, {"dag_id": "etl", "state": "success"})
    meter.create_up_down_counter("airflow.executor.open_slots").add(7)
    first.force_flush()

    samples = _scrape(bridge)
    assert samples["airflow_ti_finish_total"] == [({"dag_id": "etl", "state": "success"}, 5.0)]
    assert samples["airflow_dag_etl_duration_count"] == [({}, 2.0)]
    assert samples["airflow_dag_etl_duration_sum"] == [({}, 3.0)]
    assert samples["airflow_executor_open_slots"] == [({}, 7.0)]
    for provider in (first, second):
        provider.shutdown()


def test_bad_requests_get_clear_errors_and_change_nothing(bridge) -> None:
    def post(body: bytes, content_type: str, path: str = "/v1/metrics") -> int:
        req = urllib.request.Request(f"{bridge}{path}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
        try:
            return urllib.request.urlopen(req, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post(b"{}", "application/json") == 415
    assert post(b"\xff\x00garbage", "application/x-protobuf") == 400
    assert post(b"x", "application/x-protobuf", "/v1/traces") == 404
    assert _scrape(bridge) == {}
    health = urllib.request.urlopen(f"{bridge}/health", timeout=5).read()
    assert b"0 exports" in health


def test_names_are_valid_for_prometheus() -> None:
    assert prometheus_name("airflow.dag_processing.last_run.seconds_ago") == \
        "airflow_dag_processing_last_run_seconds_ago"
    assert prometheus_name("3rd-party") == "_3rd_party"
