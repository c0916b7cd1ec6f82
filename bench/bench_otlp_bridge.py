"""Benchmark of the OTLP bridge (not a test; prints figures).

Starts ``chicago_crime.monitoring.otlp_bridge`` in its own process on loopback and feeds it with
the OpenTelemetry SDK's OTLP/HTTP exporter (Airflow's), from several exporting "processes"
(threads with their own meter provider), each export carrying ``--series`` counter series,
a gauge and a timer, then measures: export round trip p50/p99, exports per second, the time and
size of a ``/metrics`` scrape, and the bridge's resident memory.

    .venv/bin/python bench/bench_otlp_bridge.py --exporters 4 --exports 200 --series 50

Airflow's own load is far lower: one export per process every OTEL_METRIC_EXPORT_INTERVAL (5 s)
with a few dozen series.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def exporter_loop(url: str, name: str, exports: int, series: int, out: list[float]) -> None:
    delta = {Histogram: AggregationTemporality.DELTA}
    reader = InMemoryMetricReader(preferred_temporality=delta)
    provider = MeterProvider(metric_readers=[reader], views=[View(
        instrument_type=Histogram, aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter("airflow")
    counter = meter.create_counter("airflow.ti.finish")
    timer = meter.create_histogram("airflow.dag.bench.duration")
    gauge = meter.create_up_down_counter("airflow.executor.open_slots")
    exporter = OTLPMetricExporter(endpoint=f"{url}/v1/metrics")
    for i in range(exports):
        for s in range(series):
            counter.add(1, {"dag_id": f"dag_{s}", "state": "success", "process": name})
        timer.record(float(i % 100))
        gauge.add(1)
        data = reader.get_metrics_data()
        t0 = time.perf_counter()
        exporter.export(data)
        out.append(time.perf_counter() - t0)
    exporter.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporters", type=int, default=4)
    parser.add_argument("--exports", type=int, default=200)
    parser.add_argument("--series", type=int, default=50)
    args = parser.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chicago_crime.monitoring.otlp_bridge",
                             "--port", str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        times: list[float] = []
        threads = [threading.Thread(target=exporter_loop, args=(
            url, f"p{n}", args.exports, args.series, times)) for n in range(args.exporters)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        scrapes = []
        for _ in range(20):
            s0 = time.perf_counter()
            body = urllib.request.urlopen(f"{url}/metrics", timeout=10).read()
            scrapes.append(time.perf_counter() - s0)
        times.sort()
        print(f"exports: {len(times)} from {args.exporters} exporters, {args.series} counter "
              f"series each; {len(times) / wall:.0f} exports/s")
        print(f"export round trip: p50 {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {times[int(len(times) * 0.99) - 1] * 1000:.1f} ms")
        lines = body.count(b"\n")
        print(f"/metrics scrape: p50 {statistics.median(scrapes) * 1000:.1f} ms, "
              f"{len(body) / 1024:.0f} kB, {lines} lines")
        print(f"bridge RSS: {rss_mb(proc.pid):.0f} MB; load average {os.getloadavg()[0]:.2f} "
              "(a shared machine: contention figures)")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
