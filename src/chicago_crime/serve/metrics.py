"""Prometheus metrics of the model server.

HTTP metrics (``http_requests_total{handler,method,status}``,
``http_request_duration_seconds{handler,method}``, request/response sizes) come from
``prometheus-fastapi-instrumentator``, labelled by route template (``/predict``), never by raw
path. The model's own metrics (predictions per class, batch sizes, the served version, registry
reachability) are declared here, and so are the prediction log's (rows written, dropped by
reason, failed writes, rows queued, database reachable): ``ServerMetrics`` is the log writer's
observer. Each app gets its own ``CollectorRegistry`` (several apps can
live in one test process).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_fastapi_instrumentator import Instrumentator

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class ServerMetrics:
    """The metric families of one app."""

    def __init__(self) -> None:
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
            ["model_name"], registry=self.registry,
        )
        self.model_info = Gauge(
            "model_info", "The served model (value 1).",
            ["model_name", "version", "run_id", "predictor"], registry=self.registry,
        )
        self.model_ready = Gauge(
            "model_ready", "1 when a model is loaded.", registry=self.registry
        )
        self.registry_reachable = Gauge(
            "model_registry_reachable", "1 when the last registry check succeeded.",
            registry=self.registry,
        )
        self.champion_refused = Gauge(
            "model_champion_refused", "1 when the champion alias points at a version that "
            "is not served (refused or failing to load).", registry=self.registry,
        )
        self.from_cache = Gauge(
            "model_from_local_copy", "1 while the served model is the local copy loaded at "
            "start (the registry has not confirmed it yet).", registry=self.registry,
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
            registry=self.registry,
        )
        self.log_db_up = Gauge(
            "prediction_log_database_up", "1 when the last write to the prediction log "
            "succeeded, 0 while PostgreSQL is unreachable.", registry=self.registry,
        )
        self.log_enabled = Gauge(
            "prediction_log_enabled", "1 when predictions are logged.", registry=self.registry
        )

    def model_loaded(self, name: str, version: str, run_id: str | None, predictor: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, run_id or "", predictor).set(1)
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

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def instrument(app: Any, metrics: ServerMetrics) -> None:
    """Count requests and measure latency per route template into ``metrics.registry``."""
    Instrumentator(should_group_status_codes=False, registry=metrics.registry).instrument(
        app, latency_lowr_buckets=LATENCY_BUCKETS)
