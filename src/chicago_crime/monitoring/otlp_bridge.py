"""Airflow's metrics for Prometheus: a small OTLP/HTTP receiver that Prometheus scrapes.

``python -m chicago_crime.monitoring.otlp_bridge --host 127.0.0.1 --port 4318``

Why this piece: Airflow 3 emits metrics only through statsd or OpenTelemetry (OTLP push); it
has no Prometheus endpoint of its own. The usual bridges are Go binaries that cannot be had
here: Debian 12 has no statsd exporter and no OpenTelemetry Collector, and its Prometheus (2.42)
has no OTLP receiver (2.47+). On PyPI, ``rotel`` (an embedded collector, alpha) forwards OTLP
but exports no Prometheus format, and the statsd packages are clients. Airflow's own OTel code
builds only OTLP exporters (no Prometheus reader), and a pull exporter per Airflow process would
mean one port per forked task process anyway. So Airflow pushes OTLP/HTTP (protobuf) here, and
this process keeps the latest values and serves them in Prometheus' text format on ``/metrics``.
It stands only on maintained libraries the platform already locks: ``opentelemetry-proto``
(the OTLP messages Airflow's exporter sends) and ``prometheus_client`` (the exposition); the
same module runs natively (supervisord) and in Compose (the API image), so both stacks scrape
the same names. Measured throughput: ``bench/bench_otlp_bridge.py``.

Conversion (what the OpenTelemetry Collector's Prometheus exporter does, simplified): a
monotonic sum becomes a counter (``airflow_ti_finish_total``), a gauge or non-monotonic sum a
gauge, an explicit-bucket histogram a histogram, and Airflow's exponential histograms (its
timers) a summary with ``_count`` and ``_sum``. Names: dots and other characters Prometheus does
not allow become ``_``. Labels: the data point's attributes. Airflow runs many processes (every
task is one), so the stack asks them for *delta* temporality
(``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``): each process sends what it
counted since its last export and the bridge adds it up; cumulative points replace the value.
Series live until the bridge restarts (a counter then starts again from 0, which ``rate()``
handles).
"""

from __future__ import annotations

import argparse
import gzip
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

OTLP_PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
#: Largest OTLP request accepted (Airflow's exports are a few kB).
MAX_BODY_BYTES = 8 * 1024 * 1024
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(name: str) -> str:
    """An OTel instrument name as a Prometheus metric or label name."""
    clean = _INVALID.sub("_", name)
    return "_" + clean if clean[:1].isdigit() else clean


def airflow_metrics_env(endpoint: str, interval_ms: int = 5000) -> dict[str, str]:
    """The environment that makes every Airflow process export its metrics to the bridge at
    ``endpoint`` (its base URL); the same names are in docker-compose.yaml."""
    return {
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "AIRFLOW__METRICS__STATSD_ON": "False",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": endpoint.rstrip("/") + OTLP_PATH,
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
    }


def _value(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def _labels(attributes: Iterable[KeyValue]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((prometheus_name(a.key), _value(a.value)) for a in attributes))


Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    count: float = 0.0
    total: float = 0.0
    #: upper bound -> count in that bucket (not cumulative); empty for a summary
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class _Family:
    kind: str  # counter | gauge | histogram | summary
    help: str
    points: dict[Labels, Any] = field(default_factory=dict)


class MetricStore(Collector):
    """The latest value of every series received; a ``prometheus_client`` collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self.exports = 0

    def _family(self, name: str, kind: str, help_: str) -> _Family | None:
        fam = self._families.setdefault(name, _Family(kind, help_ or name))
        return fam if fam.kind == kind else None  # a name reused with another type: ignored

    def ingest(self, request: ExportMetricsServiceRequest) -> int:
        """Apply one OTLP export; returns the number of data points taken."""
        taken = 0
        with self._lock:
            self.exports += 1
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        taken += self._metric(metric)
        return taken

    def _metric(self, metric: Any) -> int:
        name = prometheus_name(metric.name)
        kind = metric.WhichOneof("data")
        if kind in ("sum", "gauge"):
            data = getattr(metric, kind)
            counter = kind == "sum" and data.is_monotonic
            fam = self._family(name, "counter" if counter else "gauge", metric.description)
            if fam is None:
                return 0
            add = kind == "sum" and data.aggregation_temporality == DELTA
            for p in data.data_points:
                value = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
                key = _labels(p.attributes)
                fam.points[key] = fam.points.get(key, 0.0) + value if add else value
            return len(data.data_points)
        if kind in ("histogram", "exponential_histogram"):
            data = getattr(metric, kind)
            explicit = kind == "histogram"
            fam = self._family(name, "histogram" if explicit else "summary", metric.description)
            if fam is None:
                return 0
            add = data.aggregation_temporality == DELTA
            for p in data.data_points:
                key = _labels(p.attributes)
                h = fam.points.get(key) if add else None
                if h is None:
                    h = fam.points[key] = _Histogram()
                h.count += p.count
                h.total += p.sum
                if explicit:
                    bounds = [*p.explicit_bounds, float("inf")]
                    for bound, n in zip(bounds, p.bucket_counts, strict=False):
                        h.buckets[bound] = h.buckets.get(bound, 0.0) + n
            return len(data.data_points)
        return 0  # OTLP summaries: Airflow sends none

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snapshot = [(name, fam.kind, fam.help, dict(fam.points))
                        for name, fam in sorted(self._families.items())]
        for name, kind, help_, points in snapshot:
            names = sorted({k for key in points for k, _ in key})
            if kind == "counter":
                out: Any = CounterMetricFamily(name, help_, labels=names)
            elif kind == "gauge":
                out = GaugeMetricFamily(name, help_, labels=names)
            elif kind == "histogram":
                out = HistogramMetricFamily(name, help_, labels=names)
            else:
                out = SummaryMetricFamily(name, help_, labels=names)
            for key, value in points.items():
                labels = [dict(key).get(n, "") for n in names]
                if kind in ("counter", "gauge"):
                    out.add_metric(labels, value)
                elif kind == "summary":
                    out.add_metric(labels, count_value=value.count, sum_value=value.total)
                else:
                    running, buckets = 0.0, []
                    for bound in sorted(value.buckets):
                        running += value.buckets[bound]
                        buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                        running))
                    out.add_metric(labels, buckets, sum_value=value.total)
            yield out


def make_server(host: str, port: int, store: MetricStore | None = None) -> ThreadingHTTPServer:
    """The bridge's HTTP server: ``POST /v1/metrics`` (OTLP), ``GET /metrics``, ``GET /health``."""
    store = store or MetricStore()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(store)

    class Handler(BaseHTTPRequestHandler):
        server_version = "otlp-bridge"

        def log_message(self, fmt: str, *args: Any) -> None:  # requests are not logged
            pass

        def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._send(200, f"ok, {store.exports} exports received\n".encode())
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != OTLP_PATH:
                self._send(404, b"not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                self._send(413 if length else 411, b"body missing or too large\n")
                return
            if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
                self._send(415, f"only OTLP/HTTP {PROTOBUF} is accepted\n".encode())
                return
            body = self.rfile.read(length)
            try:
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest.FromString(body)
            except Exception as exc:
                self._send(400, f"not an OTLP metrics request: {exc}\n".encode())
                return
            store.ingest(request)
            self._send(200, ExportMetricsServiceResponse().SerializeToString(), PROTOBUF)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)
    print(f"OTLP/HTTP receiver on http://{args.host}:{args.port}{OTLP_PATH}, Prometheus "
          f"metrics on /metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
