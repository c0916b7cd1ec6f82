"""Benchmark of the model server: one uvicorn worker on loopback (not a test; prints figures).

Fits a small model on real records, registers it as ``champion`` in a throwaway sqlite MLflow
registry, starts ``uvicorn chicago_crime.serve.app:app`` (one worker, OMP_NUM_THREADS=1) and
measures: single ``/predict`` latency p50/p99, a batch of 1,000 records (and, in process, the
model's own ``predict_proba`` time for that batch), throughput at
concurrency 8 and the server's memory. Targets (issue #7): p50 <= 5 ms, p99 <= 20 ms,
batch of 1,000 <= 100 ms; with ``--url`` against the champion the demo trains (issue #14):
p50 <= 3 ms, p99 <= 10 ms, batch <= 60 ms.

Requests are timed with a keep-alive ``http.client`` connection (:class:`LeanClient`): httpx's
own per-request work (~0.6-1.3 ms here) is not the server's. The same requests through httpx,
and ``GET /health`` (HTTP and middleware, no model), are printed beside it.

    .venv/bin/python bench/bench_api.py --model features   # platform feature pipeline (fast path)
    .venv/bin/python bench/bench_api.py --model toy        # one-hot + logistic regression (pandas)
    .venv/bin/python bench/bench_api.py --url http://127.0.0.1:8800   # an already running server
    .venv/bin/python bench/bench_api.py --compare-logging  # prediction log on vs off (below)

``--compare-logging`` needs the native stack up with a champion (``make demo``): it starts two
model servers of its own (one worker each, the stack's API environment: the real champion from
MLflow, the prediction log writing to the stack's PostgreSQL), one with
``PREDICTION_LOG_ENABLED=true`` and one with ``false``, and measures single ``/predict`` p50/p99
and the median of batches of ``--batch-size`` on both, alternating request by request (both see
the same host load; timed with :class:`LeanClient`). Target (issue #16): logging adds <= ~0.2 ms
to p50.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHICAGO_DATA_DIR", REPO.parent / "shared" / "data" / "chicago"))
MODEL_NAME = "bench_arrest"


def portal_records(months: list[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Records as the SODA API returns them (strings, JSON booleans, missing fields omitted)."""
    from chicago_crime.portal import crimes_export_path, read_export

    raw = pd.concat([read_export(crimes_export_path(DATA, m)) for m in months])
    if limit:
        raw = raw.head(limit)
    raw = raw.astype(object).where(raw.notna(), None)
    out = []
    for rec in raw.to_dict("records"):
        rec["arrest"] = rec["arrest"] == "true"
        rec["domestic"] = rec["domestic"] == "true"
        out.append({k: v for k, v in rec.items() if v is not None})
    return out


def validated_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The frame the server hands to ``predict_proba`` for these records (validated by pydantic)."""
    from chicago_crime.record import model_frame
    from chicago_crime.serve.schemas import CrimeRecord

    return model_frame([CrimeRecord.model_validate(r).model_input() for r in records])


def in_process_batch_ms(model: Any, frame: pd.DataFrame, runs: int = 30) -> float:
    """Median ms of ``model.predict_proba(frame)`` in this process: the model's share of a
    batch request, without HTTP, JSON and validation (and less exposed to host load)."""
    for _ in range(3):
        model.predict_proba(frame)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_proba(frame)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fit_model(kind: str, records: list[dict[str, Any]]) -> Any:
    from imblearn.pipeline import Pipeline as ImbPipeline
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = validated_frame(records)
    y = np.array([r["arrest"] for r in records])
    if kind == "toy":
        model = Pipeline([
            ("encode", ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="ignore"),
                                           ["primary_type", "iucr", "domestic"])])),
            ("classify", LogisticRegression(max_iter=1000)),
        ])
    else:
        from chicago_crime import stages
        from chicago_crime.portal import snake_case

        stations = pd.read_csv(DATA / "police_stations.csv", dtype=str)
        stations.columns = [snake_case(c) for c in stations.columns]
        model = ImbPipeline([
            *stages.estimators(stations),
            ("clf", CalibratedClassifierCV(LogisticRegression(max_iter=1000), cv=3)),
        ])
    return model.fit(frame, y)


def register(model: Any, root: Path, check: list[dict[str, Any]]) -> str:
    """Log + register the model (skops, with its serving check on ``check`` records) in a
    sqlite registry under ``root``; returns the tracking URI."""
    import mlflow
    import mlflow.sklearn

    from chicago_crime import serialization
    from chicago_crime.model import artifact

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("bench", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("threshold", 0.35)
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=MODEL_NAME,
            serialization_format="skops", pip_requirements=["scikit-learn"],
            skops_trusted_types=serialization.trusted_types(),
        )
        artifact.log_serving_check(model, check)
    client.set_registered_model_alias(MODEL_NAME, "champion", info.registered_model_version)
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MODEL_NAME": MODEL_NAME,
           "OMP_NUM_THREADS": "1", "MODEL_POLL_SECONDS": "30", "MODEL_CACHE_DIR": ""}
    cmd = [sys.executable, "-m", "uvicorn", "chicago_crime.serve.app:app", "--host",
           "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning",
           "--no-access-log"]
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait_ready(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of a local process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


class LeanClient:
    """One keep-alive HTTP/1.1 connection through the standard library, for the timings.

    The figures are the server's: httpx spends about 0.6 ms of client-side work per request on
    this VM (a trivial FastAPI endpoint measured 1.2 ms with httpx, 0.6 ms with ``http.client``),
    which would be counted as server latency. ``run`` also prints the httpx figure."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                               timeout=60)
        self.headers = {"content-type": "application/json"}

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data

    def timed(self, method: str, path: str, body: bytes | None = None) -> float:
        """Milliseconds from sending the request to the last byte of the answer."""
        start = time.perf_counter()
        self.request(method, path, body)
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.conn.close()


def run(url: str, records: list[dict[str, Any]], n_single: int, n_batches: int,
        batch_size: int, concurrency: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Bodies are encoded once up front: the client's JSON encoding is not the server's cost.
    bodies = [json.dumps(r).encode() for r in records]
    headers = {"content-type": "application/json"}
    lean = LeanClient(url)
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        info = client.get("/model").json()
        out["model"] = f"{info['name']} v{info['version']} ({info['predictor']} path)"
        for body in bodies[:200]:  # warm-up (both clients)
            lean.request("POST", "/predict", body)
            client.post("/predict", content=body).raise_for_status()
        # single requests: lean client and httpx alternate in blocks of 100 (same host load);
        # /health in the same blocks is the floor: HTTP, routing and the middleware, no model
        latencies: list[float] = []
        via_httpx: list[float] = []
        health: list[float] = []
        for i in range(n_single):
            body = bodies[i % len(bodies)]
            if (i // 100) % 2 == 0:
                latencies.append(lean.timed("POST", "/predict", body))
                health.append(lean.timed("GET", "/health"))
            else:
                start = time.perf_counter()
                client.post("/predict", content=body).raise_for_status()
                via_httpx.append((time.perf_counter() - start) * 1000)
        out["single_p50_ms"], out["single_p99_ms"] = pct(latencies, 50), pct(latencies, 99)
        out["httpx_p50_ms"], out["httpx_p99_ms"] = pct(via_httpx, 50), pct(via_httpx, 99)
        out["health_p50_ms"] = pct(health, 50)
        out["n_single"] = len(latencies)
        batch = json.dumps({"records": records[:batch_size]}).encode()
        lean.request("POST", "/predict/batch", batch)
        batch_ms = [lean.timed("POST", "/predict/batch", batch) for _ in range(n_batches)]
        out["batch_median_ms"], out["batch_p90_ms"] = statistics.median(batch_ms), pct(batch_ms, 90)
    lean.close()

    counts = [0] * concurrency
    loaded: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(k: int) -> None:
        mine = []
        c = LeanClient(url)
        i = k
        while time.perf_counter() < stop_at:
            mine.append(c.timed("POST", "/predict", bodies[i % len(bodies)]))
            counts[k] += 1
            i += concurrency
        c.close()
        with lock:
            loaded.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["throughput_rps"] = sum(counts) / (time.perf_counter() - start)
    out["loaded_p50_ms"], out["loaded_p99_ms"] = pct(loaded, 50), pct(loaded, 99)
    return out


def metric(url: str, name: str) -> float:
    """A sample of the server's /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def compare_logging(records: list[dict[str, Any]], rounds: int, per_round: int,
                    batches: int, batch_size: int) -> None:
    """Single /predict p50/p99 and a batch's median with the prediction log on and off, the
    real champion; requests timed with :class:`LeanClient`."""
    from chicago_crime.devtools import stack

    settings = stack.stack_settings()
    base = stack.program_envs(settings, None)["api"]
    base.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the stack's API's metrics are not ours to share
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for label, enabled in (("on", "true"), ("off", "false")):
            port = free_port()
            env = {**base, "MODEL_CACHE_DIR": "", "PREDICTION_LOG_ENABLED": enabled,
                   "FASTAPI_PORT": str(port), "API_URL": f"http://127.0.0.1:{port}"}
            cmd = [sys.executable, "-m", "uvicorn", "chicago_crime.serve.app:app", "--host",
                   "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level",
                   "warning", "--no-access-log"]
            servers[label] = (subprocess.Popen(cmd, cwd=REPO, env=env),
                              f"http://127.0.0.1:{port}")
        for _, url in servers.values():
            wait_ready(url)
        bodies = [json.dumps(r).encode() for r in records]
        batch = json.dumps({"records": records[:batch_size]}).encode()
        latencies: dict[str, list[float]] = {label: [] for label in servers}
        batch_ms: dict[str, list[float]] = {label: [] for label in servers}
        clients = {label: LeanClient(url) for label, (_, url) in servers.items()}
        model = httpx.get(f"{servers['on'][1]}/model", timeout=30).json()
        for client in clients.values():
            for body in bodies[:200]:
                client.request("POST", "/predict", body)
            client.request("POST", "/predict/batch", batch)
        # one request to each server in turn (which goes first alternates): both see the same
        # host load, request by request; the paired differences are reported too
        labels = list(clients)
        for i in range(rounds * per_round):
            body = bodies[i % len(bodies)]
            for label in (labels if i % 2 == 0 else labels[::-1]):
                latencies[label].append(clients[label].timed("POST", "/predict", body))
        for i in range(batches):
            for label in (labels if i % 2 == 0 else labels[::-1]):
                batch_ms[label].append(clients[label].timed("POST", "/predict/batch", batch))
        time.sleep(2)  # the last batch is written (flush interval 1 s)
        written = metric(servers["on"][1], "prediction_log_rows_written_total")
        for client in clients.values():
            client.close()
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    n = rounds * per_round
    print(f"model: {model['name']} v{model['version']} ({model['predictor']} path), the "
          f"native stack's champion; host load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (client, servers and the rest of the stack share them)")
    p50 = {k: pct(v, 50) for k, v in latencies.items()}
    p99 = {k: pct(v, 99) for k, v in latencies.items()}
    paired = [a - b for a, b in zip(latencies["on"], latencies["off"], strict=True)]
    for label in ("off", "on"):
        print(f"single /predict, prediction log {label:<3}  p50 {p50[label]:.2f} ms   "
              f"p99 {p99[label]:.2f} ms   (n={n}, requests alternating between the servers)")
    print(f"difference (on - off)              p50 {p50['on'] - p50['off']:+.2f} ms   "
          f"p99 {p99['on'] - p99['off']:+.2f} ms   median of paired differences "
          f"{statistics.median(paired):+.3f} ms   (target: p50 <= +0.2 ms)")
    batch_median = {k: statistics.median(v) for k, v in batch_ms.items()}
    print(f"batch of {batch_size}, prediction log off / on   median {batch_median['off']:.1f} / "
          f"{batch_median['on']:.1f} ms   (n={batches} each, alternating)")
    print(f"rows written by the logging server: {written:.0f} (warm-up 200 + {batch_size} + "
          f"measured {n} + {batches} x {batch_size})")
    in_process_logging_cost(records, settings)


def in_process_logging_cost(records: list[dict[str, Any]], settings: Any,
                            n: int = 20_000) -> None:
    """What logging adds to a request's own work, measured in this process (less exposed to
    host load than HTTP timings): validating the record for the id, building the queued entry
    and ``submit``, with the writer thread running against the stack's PostgreSQL."""
    from datetime import UTC, datetime

    from chicago_crime.monitoring.prediction_log import PredictionLog, Served
    from chicago_crime.serve.schemas import CrimeRecord

    log = PredictionLog.from_settings(settings.model_copy(update={
        "prediction_log_enabled": True, "prediction_log_queue_size": 10 * n}))
    assert log is not None, "PG_MONITORING_PASSWORD is not set"
    log.start()
    validated = [CrimeRecord.model_validate(r) for r in records[:500]]
    times = []
    try:
        for i in range(n):
            rec = validated[i % len(validated)]
            start = time.perf_counter()
            log.submit(Served(
                request_id=f"bench-{i}", logged_at=datetime.now(UTC), model_version="bench",
                threshold=0.5, latency_ms=1.0, records=[rec.__dict__],
                record_ids=[rec.record_id], probabilities=[0.5], decisions=[False]))
            times.append((time.perf_counter() - start) * 1e6)
            if i % 100 == 0:
                time.sleep(0.001)  # about the rate the HTTP benchmark reaches
    finally:
        log.close()
    import psycopg

    with psycopg.connect(settings.pg_monitoring_url()) as conn:  # leave no bench rows behind
        conn.execute("DELETE FROM prediction_log WHERE model_version = 'bench'")
    print(f"in process: queueing one prediction (entry + submit) median "
          f"{statistics.median(times):.1f} us, p99 {pct(times, 99):.1f} us (n={n}); "
          f"written {log.written}, dropped {sum(log.dropped.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["features", "toy"], default="features")
    parser.add_argument("--train-records", type=int, default=20_000)
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--compare-logging", action="store_true",
                        help="p50/p99 with the prediction log on vs off (native stack champion)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.compare_logging:
        compare_logging(portal_records(["2018-06"], limit=5000), args.rounds,
                        max(1, args.single // args.rounds), args.batches, args.batch_size)
        return

    records = portal_records(["2018-03"], limit=5000)
    server = None
    in_process: float | None = None
    url = args.url
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        try:
            if url is None:
                started = time.perf_counter()
                model = fit_model(args.model, portal_records(["2018-01", "2018-02"],
                                                             args.train_records))
                uri = register(model, Path(tmp), records[:50])
                print(f"model '{args.model}' fitted and registered in "
                      f"{time.perf_counter() - started:.1f} s")
                in_process = in_process_batch_ms(model, validated_frame(records[:args.batch_size]))
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                server = start_server(uri, port)
                started = time.perf_counter()
                wait_ready(url)
                print(f"server ready in {time.perf_counter() - started:.1f} s")
            results = run(url, records, args.single, args.batches, args.batch_size,
                          args.concurrency, args.seconds)
            if server is not None:
                results["rss_mb"], results["peak_rss_mb"] = rss_mb(server.pid)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    print(f"model: {results.pop('model')}; host load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (client and server share them)")
    targets = ("<= 3 / <= 10 ms", "<= 60 ms") if args.url else ("<= 5 / <= 20 ms", "<= 100 ms")
    print(f"single /predict   p50 {results['single_p50_ms']:.2f} ms   "
          f"p99 {results['single_p99_ms']:.2f} ms   (target {targets[0]}, "
          f"n={results['n_single']}, http.client)")
    print(f"  same, httpx     p50 {results['httpx_p50_ms']:.2f} ms   "
          f"p99 {results['httpx_p99_ms']:.2f} ms   (the client's own work included)")
    print(f"  GET /health     p50 {results['health_p50_ms']:.2f} ms   (the floor: no model)")
    print(f"batch of {args.batch_size}    median {results['batch_median_ms']:.1f} ms   "
          f"p90 {results['batch_p90_ms']:.1f} ms   (target {targets[1]}, n={args.batches})")
    if in_process is not None:
        print(f"  model alone (in process, predict_proba of the same batch) median "
              f"{in_process:.1f} ms")
    print(f"concurrency {args.concurrency}     {results['throughput_rps']:.0f} requests/s   "
          f"p50 {results['loaded_p50_ms']:.2f} ms   p99 {results['loaded_p99_ms']:.2f} ms")
    if "rss_mb" in results:
        print(f"server memory     RSS {results['rss_mb']:.0f} MB   "
              f"peak {results['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
