"""Prometheus metrics of the model server.

HTTP metrics (``http_requests_total{handler,method,status}``,
``http_request_duration_seconds{handler,method}``, request/response sizes) come from
``prometheus-fastapi-instrumentator``, labelled by route template (``/predict``), never by raw
path. The model's own metrics (predictions per class, batch sizes, the served version, registry
reachability) are declared here, and so are the prediction log's (rows written, dropped by
reason, failed writes, rows queued, database reachable): ``ServerMetrics`` is the log writer's
observer. Each app gets its own ``CollectorRegistry`` (several apps can
live in one test process).

Several worker processes (``API_WORKERS``): with ``PROMETHEUS_MULTIPROC_DIR`` set before
``prometheus_client`` is imported, every process writes its values to files in that directory
and ``/metrics`` serves ``MultiProcessCollector``'s aggregate over all of them, whichever worker
answers (counters and histograms add up; each gauge says how: ``multiprocess_mode``). The
directory is emptied once, by uvicorn's parent (``chicago_crime.serve.server``); a worker removes
its live-gauge files when it stops (``retire``), and those of dead processes when it starts
(``sweep_dead``): uvicorn has no hook in the parent when a worker dies, unlike gunicorn's
``child_exit``. Without the variable, each app's own registry is served, as in one process.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_fastapi_instrumentator import Instrumentator

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a live gauge's file names its process: gauge_livesum_1234.db
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiproc_dir() -> str | None:
    """The shared metrics directory, or None (one process: each app serves its own registry).

    Created if missing (``serve.server`` creates and empties it before the workers start; an
    app started some other way, e.g. plain ``uvicorn``, would otherwise fail at its first
    metric), never emptied here: a worker cannot tell a stale file from a sibling's.
    """
    path = os.environ.get(MULTIPROC_ENV) or None
    if path:
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: not ours to judge
        return True
    return True


def sweep_dead(path: str) -> list[int]:
    """Remove the live-gauge files of processes that are gone (a worker killed, not stopped)."""
    dead = sorted({int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*.db"))
                   if (m := _LIVE_FILE.search(f)) and not _alive(int(m.group(1)))})
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return dead


class _Aggregate:
    """``MultiProcessCollector`` without ``model_info`` series at 0: the files cannot delete a
    label set, so a version no longer served is set to 0 and left out here."""

    def __init__(self, path: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            if metric.name == "model_info":
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric


class ServerMetrics:
    """The metric families of one app."""

    def __init__(self) -> None:
        multiproc_dir()  # the shared directory exists before the first metric writes to it
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "predictions_total", "Records scored, by predicted class.",
            ["model_version", "arrest"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "prediction_batch_records", "Records per prediction request.",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000), registry=self.registry,
        )
        self.model_version = Gauge(
            "model_version", "Registry version number of the served model (0 = none).",
            ["model_name"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "model_info", "The served model (value 1).",
            ["model_name", "version", "run_id", "predictor"], registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_ready = Gauge(
            "model_ready", "1 when a model is loaded (every worker).", registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.registry_reachable = Gauge(
            "model_registry_reachable", "1 when the last registry check succeeded.",
            registry=self.registry, multiprocess_mode="livemin",
        )
        self.champion_refused = Gauge(
            "model_champion_refused", "1 when the champion alias points at a version that "
            "is not served (refused or failing to load).", registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.from_cache = Gauge(
            "model_from_local_copy", "1 while the served model is the local copy loaded at "
            "start (the registry has not confirmed it yet).", registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "model_reloads_total", "Model versions swapped in.", registry=self.registry
        )
        # the prediction log (monitoring.prediction_log): this process's writer
        self.log_rows_written = Counter(
            "prediction_log_rows_written_total", "Predictions written to the prediction log.",
            registry=self.registry,
        )
        self.log_rows_dropped = Counter(
            "prediction_log_rows_dropped_total", "Predictions not logged: queue_full (PostgreSQL "
            "slow or down), rejected (PostgreSQL refused the batch), shutdown (still queued when "
            "the flush time ran out).", ["reason"], registry=self.registry,
        )
        self.log_write_failures = Counter(
            "prediction_log_write_failures_total", "Failed attempts to reach PostgreSQL or write "
            "a batch (the batch is retried while the database is unreachable).",
            registry=self.registry,
        )
        self.log_queued = Gauge(
            "prediction_log_queued_rows", "Predictions waiting to be written.",
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.log_db_up = Gauge(
            "prediction_log_database_up", "1 when the last write to the prediction log "
            "succeeded, 0 while PostgreSQL is unreachable.", registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.log_enabled = Gauge(
            "prediction_log_enabled", "1 when predictions are logged.", registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._info_labels: tuple[str, ...] | None = None

    def model_loaded(self, name: str, version: str, run_id: str | None, predictor: str) -> None:
        labels = (name, version, run_id or "", predictor)
        if multiproc_dir() is None:
            self.model_info.clear()
        elif self._info_labels is not None and self._info_labels != labels:
            self.model_info.labels(*self._info_labels).set(0)  # left out of the exposition
        self._info_labels = labels
        self.model_info.labels(*labels).set(1)
        try:
            self.model_version.labels(name).set(float(version))
        except ValueError:
            self.model_version.labels(name).set(0)
        self.model_ready.set(1)
        self.reloads.inc()

    def record_predictions(self, version: str, arrests: list[bool]) -> None:
        positive = sum(arrests)
        if positive:
            self.predictions.labels(version, "true").inc(positive)
        if len(arrests) - positive:
            self.predictions.labels(version, "false").inc(len(arrests) - positive)
        self.batch_size.observe(len(arrests))

    # -- the prediction log's observer (called from its writer thread; counters are thread-safe)
    def log_written(self, rows: int) -> None:
        self.log_rows_written.inc(rows)

    def log_dropped(self, reason: str, rows: int) -> None:
        self.log_rows_dropped.labels(reason).inc(rows)

    def log_write_failed(self) -> None:
        self.log_write_failures.inc()

    def log_database_up(self, up: bool) -> None:
        self.log_db_up.set(1 if up else 0)

    def observe(self, store: Any, prediction_log: Any) -> None:
        """Set the gauges that describe this process's state (at each scrape, and periodically
        in every worker when several share the metrics: a worker no scrape reaches would
        otherwise keep its first values, e.g. ``model_ready`` 0)."""
        if prediction_log is not None:
            self.log_queued.set(prediction_log.queued_rows)
        self.registry_reachable.set(1 if store.registry_reachable else 0)
        self.model_ready.set(1 if store.current is not None else 0)
        self.champion_refused.set(1 if store.champion_failure is not None else 0)
        self.from_cache.set(1 if store.current is not None and store.current.origin == "cache"
                            else 0)

    def exposition(self) -> tuple[bytes, str]:
        """This app's registry, or every worker's aggregate in multiprocess mode."""
        path = multiproc_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        registry.register(_Aggregate(path))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    @staticmethod
    def retire() -> None:
        """A worker stopping: its live gauges leave the aggregate (its counters stay in it)."""
        path = multiproc_dir()
        if path is not None:
            multiprocess.mark_process_dead(os.getpid(), path)


def instrument(app: Any, metrics: ServerMetrics) -> None:
    """Count requests and measure latency per route template into ``metrics.registry``."""
    Instrumentator(should_group_status_codes=False, registry=metrics.registry).instrument(
        app, latency_lowr_buckets=LATENCY_BUCKETS)
