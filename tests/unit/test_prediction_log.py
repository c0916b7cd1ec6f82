"""The prediction log's writer logic in-process (a fake sink stands in for PostgreSQL; the
real database is exercised by tests/integration/test_prediction_log_stack.py): batching, the flush
interval, a full queue dropping and counting, PostgreSQL down then back, the flush at
shutdown and its bound; X-Request-ID and what the /predict routes hand over."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_serve import fit_toy_model, portal_records
from test_serve_limits import StaticStore, settings_for

from chicago_crime import record as R
from chicago_crime.model.predict import make_predictor
from chicago_crime.model.registry import ModelCard
from chicago_crime.monitoring import prediction_log as PL
from chicago_crime.monitoring.prediction_log import (
    QUEUE_FULL,
    REJECTED,
    SHUTDOWN,
    PredictionLog,
    Served,
    SinkUnavailable,
)
from chicago_crime.serve.app import create_app
from chicago_crime.serve.metrics import ServerMetrics
from chicago_crime.serve.model_store import LoadedModel
from chicago_crime.serve.schemas import EXAMPLE_RECORD, CrimeRecord


class FakeSink:
    """Records the batches it is given; ``down`` makes it unreachable, ``refuse`` makes it
    refuse a batch (a non-connection error), ``gate`` holds writes until set."""

    def __init__(self) -> None:
        self.batches: list[list[Served]] = []
        self.down = False
        self.refuse = 0
        self.opened = 0
        self.expired: list[int] = []
        self.closed = False
        self.gate = threading.Event()
        self.gate.set()
        self.attempts = 0

    def open(self) -> None:
        if self.down:
            raise SinkUnavailable("connection refused")
        self.opened += 1

    def write(self, batch: Sequence[Served]) -> int:
        self.gate.wait(10)
        self.attempts += 1
        if self.down:
            raise SinkUnavailable("connection refused")
        if self.refuse:
            self.refuse -= 1
            raise ValueError("invalid input syntax")
        self.batches.append(list(batch))
        return sum(len(s) for s in batch)

    def expire(self, days: int) -> int:
        if self.down:
            raise SinkUnavailable("connection refused")
        self.expired.append(days)
        return 0

    def close(self) -> None:
        self.closed = True

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return [row for batch in self.batches for served in batch for row in PL.rows(served)]


def served(n: int = 1, request_id: str = "r", version: str = "1") -> Served:
    return Served(
        request_id=request_id, logged_at=datetime.now(UTC), model_version=version,
        threshold=0.4, latency_ms=1.5,
        records=[{"date": datetime(2018, 3, 1, 13), "primary_type": "THEFT",
                  "beat": 1533, "latitude": math.nan}] * n,
        record_ids=[f"{request_id}-{i}" for i in range(n)],
        probabilities=[0.25] * n, decisions=[False] * n)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def make_log(sink: FakeSink) -> Iterator[Callable[..., PredictionLog]]:
    logs: list[PredictionLog] = []

    def make(**options: Any) -> PredictionLog:
        values = {"queue_size": 10_000, "batch_size": 100, "flush_seconds": 0.05,
                  "shutdown_seconds": 2.0, **options}
        log = PredictionLog(sink, **values)
        logs.append(log)
        return log

    yield make
    sink.gate.set()
    sink.down = False
    for log in logs:
        log.close()


# -- rows ----------------------------------------------------------------------------------------
def test_a_row_holds_the_model_fields_as_json():
    row = next(PL.rows(served(1, "abc")))
    assert row[:3] == ("abc", 0, "abc-0")
    record = __import__("json").loads(row[PL.COLUMNS.index("record")])
    assert list(record) == list(R.MODEL_FIELDS)
    assert record["date"] == "2018-03-01T13:00:00"
    assert record["beat"] == 1533 and record["latitude"] is None  # NaN is not JSON
    assert record["iucr"] is None
    assert len(row) == len(PL.COLUMNS)


def test_the_table_is_created_idempotently():
    statements = PL.ddl()
    assert statements[0].startswith("\nCREATE TABLE IF NOT EXISTS prediction_log")
    assert "record JSONB NOT NULL" in statements[0]
    assert "logged_at TIMESTAMP WITH TIME ZONE NOT NULL" in statements[0]
    assert any("CREATE INDEX IF NOT EXISTS prediction_log_logged_at" in s for s in statements)
    assert any("CREATE INDEX IF NOT EXISTS prediction_log_record_id" in s for s in statements)


# -- the writer ----------------------------------------------------------------------------------
def test_rows_are_written_in_batches_of_at_most_batch_size(make_log, sink):
    log = make_log(batch_size=100, flush_seconds=30)
    log.start()
    for i in range(250):
        assert log.submit(served(1, f"r{i}"))
    wait_for("two full batches", lambda: log.written >= 200)
    assert [sum(len(s) for s in b) for b in sink.batches[:2]] == [100, 100]
    assert log.close()
    assert log.written == 250 and [s.request_id for b in sink.batches for s in b] == [
        f"r{i}" for i in range(250)]  # in order, none twice
    assert sink.opened == 1 and sink.closed


def test_a_partial_batch_is_written_after_flush_seconds(make_log, sink):
    log = make_log(batch_size=1000, flush_seconds=0.05)
    log.start()
    log.submit(served(3))
    wait_for("the flush", lambda: log.written == 3)
    assert log.queued_rows == 0


def test_a_batch_request_larger_than_a_batch_is_written_whole(make_log, sink):
    log = make_log(batch_size=10)
    log.start()
    log.submit(served(25, "big"))
    wait_for("the big request", lambda: log.written == 25)
    assert len(sink.batches[0]) == 1 and len(sink.batches[0][0]) == 25


def test_a_full_queue_drops_and_counts_never_blocks(make_log, sink):
    metrics = ServerMetrics()
    sink.gate.clear()  # the database hangs: nothing leaves the queue
    log = make_log(queue_size=10, batch_size=5, observer=metrics)
    log.start()
    started = time.perf_counter()
    accepted = [log.submit(served(1, f"r{i}")) for i in range(30)]
    submit_seconds = time.perf_counter() - started
    # the writer may hold one batch of 5 in hand: 10 to 15 accepted, the rest dropped
    assert 10 <= sum(accepted) <= 15
    assert log.dropped[QUEUE_FULL] == 30 - sum(accepted)
    exposition = metrics.exposition()[0].decode()
    assert f'prediction_log_rows_dropped_total{{reason="queue_full"}} {30 - sum(accepted)}.0' \
        in exposition
    assert submit_seconds < 5  # never waits for the database (a generous bound, not a timing)
    sink.gate.set()
    assert log.close()
    assert log.written == sum(accepted)


def test_postgresql_down_then_back_loses_nothing(make_log, sink, monkeypatch):
    monkeypatch.setattr(PL, "MAX_BACKOFF_SECONDS", 0.05)
    metrics = ServerMetrics()
    sink.down = True
    log = make_log(observer=metrics)
    log.start()
    for i in range(20):
        assert log.submit(served(1, f"r{i}"))
    wait_for("failed attempts", lambda: log.failed_writes >= 3)
    assert log.database_up is False and log.written == 0
    assert "prediction_log_database_up 0.0" in metrics.exposition()[0].decode()
    sink.down = False
    wait_for("recovery", lambda: log.written == 20)
    assert log.database_up is True
    exposition = metrics.exposition()[0].decode()
    assert "prediction_log_database_up 1.0" in exposition
    assert "prediction_log_rows_written_total 20.0" in exposition
    assert f"prediction_log_write_failures_total {float(log.failed_writes)}" in exposition
    assert sum(log.dropped.values()) == 0


def test_a_refused_batch_is_dropped_counted_and_the_next_is_written(make_log, sink):
    sink.refuse = 1
    log = make_log(batch_size=5, flush_seconds=30)
    log.start()
    for i in range(10):
        log.submit(served(1, f"r{i}"))
    wait_for("the second batch", lambda: log.written == 5)
    assert log.dropped[REJECTED] == 5


def test_close_flushes_what_is_queued(make_log, sink):
    log = make_log(batch_size=1000, flush_seconds=3600)  # only the shutdown writes
    log.start()
    for i in range(50):
        log.submit(served(2, f"r{i}"))
    assert log.close() is True
    assert log.written == 100 and sink.closed
    assert not log.submit(served(1))  # closed: refused and counted
    assert log.dropped[SHUTDOWN] == 1


def test_close_gives_up_after_shutdown_seconds_and_counts_the_loss(make_log, sink, caplog):
    sink.down = True
    log = make_log(shutdown_seconds=0.5)
    log.start()
    for i in range(7):
        log.submit(served(1, f"r{i}"))
    started = time.monotonic()
    assert log.close() is False
    assert time.monotonic() - started < 5  # bounded (generous margin for a loaded machine)
    assert log.dropped[SHUTDOWN] == 7 and log.written == 0
    assert "7 prediction(s) not written at shutdown" in caplog.text


def test_close_without_start_writes_synchronously(make_log, sink):
    log = make_log()
    log.submit(served(4))
    assert log.close() and log.written == 4


def test_retention_runs_at_start_when_configured(make_log, sink):
    log = make_log(retention_days=30)
    log.start()
    wait_for("the retention delete", lambda: sink.expired == [30])
    make_log(retention_days=0).start()
    time.sleep(0.2)
    assert sink.expired == [30]


def test_off_without_a_password_or_when_disabled():
    assert PredictionLog.from_settings(settings_for(prediction_log_enabled=False)) is None
    assert PredictionLog.from_settings(settings_for(prediction_log_enabled=True,
                                                    pg_monitoring_password=None)) is None
    on = PredictionLog.from_settings(settings_for(
        prediction_log_enabled=True, pg_monitoring_password="x", prediction_log_batch_size=7))
    assert on is not None and on.batch_size == 7 and isinstance(on.sink, PL.PostgresSink)


# -- the API hands every prediction over --------------------------------------------------------
@pytest.fixture(scope="module")
def toy(shared_data: Path) -> Any:
    return fit_toy_model(portal_records(shared_data, "2018-01", 2000), c=1.0)


@pytest.fixture
def api(toy: Any, make_log: Callable[..., PredictionLog]) -> Iterator[tuple[TestClient,
                                                                            PredictionLog]]:
    settings = settings_for()
    store = StaticStore(settings)
    store._current = LoadedModel(
        card=ModelCard(name="toy", version="7", run_id="r1", threshold=0.3), source="memory",
        model=toy, predictor=make_predictor(toy), version_tags={})
    log = make_log(flush_seconds=3600)
    with TestClient(create_app(settings, store=store, prediction_log=log)) as client:
        yield client, log


def queued(log: PredictionLog) -> list[Served]:
    return list(log._queue)


def test_predict_queues_one_row_with_the_request_id(api):
    client, log = api
    resp = client.post("/predict", json=EXAMPLE_RECORD, headers={"X-Request-ID": "trace-42"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "trace-42"
    (entry,) = queued(log)
    assert entry.request_id == "trace-42" and entry.model_version == "7"
    assert entry.record_ids == [EXAMPLE_RECORD["id"]]
    assert entry.probabilities == [resp.json()["arrest_probability"]]
    assert entry.decisions == [resp.json()["arrest"]] and entry.threshold == 0.3
    assert entry.latency_ms > 0 and entry.logged_at.tzinfo is not None
    assert entry.records[0]["primary_type"] == "BATTERY"


def test_batch_queues_one_row_per_record(api):
    client, log = api
    records = [EXAMPLE_RECORD, {"date": "2018-03-01T13:00:00", "primary_type": "THEFT"},
               {**EXAMPLE_RECORD, "id": 11507075}]
    resp = client.post("/predict/batch", json={"records": records})
    assert resp.status_code == 200
    (entry,) = queued(log)
    assert len(entry) == 3 and entry.record_ids == ["11507074", None, "11507075"]
    assert entry.request_id == resp.headers["x-request-id"]
    assert entry.probabilities == [p["arrest_probability"] for p in resp.json()["predictions"]]


@pytest.mark.parametrize("given", ["", "a b", "x" * 129, "id\u00e9", "<script>", "a,b"])
def test_an_unacceptable_request_id_is_replaced(api, given):
    client, log = api
    resp = client.post("/predict", json=EXAMPLE_RECORD,
                       headers={"X-Request-ID": given.encode("utf-8")})
    rid = resp.headers["x-request-id"]
    assert rid != given and len(rid) == 32 and int(rid, 16) >= 0
    assert queued(log)[0].request_id == rid


def test_every_answer_carries_a_request_id_errors_too(api):
    client, log = api
    for resp in (client.get("/health"), client.post("/predict", json={"date": "x"}),
                 client.get("/health", headers={"Host": "evil.example"})):
        assert len(resp.headers["x-request-id"]) == 32, resp.status_code
    assert client.get("/health").headers["x-request-id"] != \
        client.get("/health").headers["x-request-id"]
    assert not queued(log)  # an invalid record is not a prediction


def test_metrics_show_the_prediction_log(api):
    client, _ = api
    client.post("/predict", json=EXAMPLE_RECORD)
    body = client.get("/metrics").text
    assert "prediction_log_enabled 1.0" in body
    assert "prediction_log_queued_rows 1.0" in body


def test_the_record_id_is_the_portal_id():
    assert CrimeRecord.model_validate(EXAMPLE_RECORD).record_id == "11507074"
    assert CrimeRecord.model_validate({**EXAMPLE_RECORD, "id": 42}).record_id == "42"
    for odd in (None, True, 1.5, [1], "", "x" * 101):
        assert CrimeRecord.model_validate({**EXAMPLE_RECORD, "id": odd}).record_id is None
    assert CrimeRecord.model_validate({"date": "2018-03-01", "primary_type": "X"}).record_id \
        is None


def test_the_writer_url_is_the_writer_login_on_the_monitoring_database():
    s = settings_for(pg_monitoring_password="p@ss/word", pg_port=6543)
    assert s.pg_monitoring_url("postgresql+psycopg") == (
        "postgresql+psycopg://monitoring_writer:p%40ss%2Fword@127.0.0.1:6543/monitoring")
    conninfo = PL.PostgresSink.from_settings(s)._conninfo
    assert (conninfo["user"], conninfo["dbname"], conninfo["password"]) == (
        "monitoring_writer", "monitoring", "p@ss/word")
