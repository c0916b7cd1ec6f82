"""The prediction log on the native stack: every prediction the API serves reaches PostgreSQL
with its fields, survives an API restart, is flushed at a clean shutdown, is written after
PostgreSQL comes back (the API serving meanwhile), expires after the retention; the writer's
login reaches the monitoring database alone.

Rows are read back with ``read_predictions`` (the platform's login, as the monitoring jobs
read them) and with the writer's own login where a test needs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from chicago_crime.devtools import demo, stack
from chicago_crime.monitoring.prediction_log import (
    READ_COLUMNS,
    TABLE,
    PostgresSink,
    read_predictions,
)
from chicago_crime.record import MODEL_FIELDS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings():
    return stack.stack_settings()


@pytest.fixture(scope="module")
def champion(served_champion) -> dict[str, Any]:
    return served_champion


def api(settings) -> str:
    return f"http://127.0.0.1:{settings.fastapi_port}"


def record(tag: str, **extra: Any) -> dict[str, Any]:
    """The demo's record with a unique portal id (the row is found by it)."""
    return {**demo.EXAMPLE_RECORD, "id": f"{tag}-{uuid.uuid4().hex[:12]}", **extra}


def rows_for(settings, predicate: Callable[[Any], Any], since: datetime) -> Any:
    frame = read_predictions(settings, since, datetime.now(UTC) + timedelta(minutes=5))
    return frame[predicate(frame)]


def wait_rows(settings, predicate: Callable[[Any], Any], since: datetime, expected: int,
              timeout: float = 120.0) -> Any:
    """The rows matching ``predicate`` once there are ``expected`` of them."""
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        try:
            found = rows_for(settings, predicate, since)
        except Exception:  # PostgreSQL (re)starting
            time.sleep(1)
            continue
        if len(found) >= expected:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{expected} logged rows expected within {timeout:.0f}s, found "
                         f"{0 if found is None else len(found)}")


def writer_connect(settings, dbname: str | None = None, **kw: Any) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=settings.pg_port,
                           dbname=dbname or settings.pg_monitoring_db,
                           user=settings.pg_monitoring_user,
                           password=settings.pg_monitoring_password.get_secret_value(),
                           connect_timeout=10, **kw)


# -- what is logged ------------------------------------------------------------------------------
def test_every_prediction_is_logged_with_its_fields(settings, champion):
    since = datetime.now(UTC) - timedelta(seconds=5)
    rid = f"it-{uuid.uuid4().hex}"
    single = record("single")
    resp = requests.post(f"{api(settings)}/predict", json=single,
                         headers={"X-Request-ID": rid}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Request-ID"] == rid
    body = resp.json()
    batch = [record("batch"), {"date": "2018-06-01T21:05:00", "primary_type": "NARCOTICS"},
             record("batch", primary_type="THEFT")]
    resp_b = requests.post(f"{api(settings)}/predict/batch", json={"records": batch}, timeout=60)
    assert resp_b.status_code == 200, resp_b.text
    batch_rid = resp_b.headers["X-Request-ID"]

    found = wait_rows(settings, lambda f: f["request_id"].isin([rid, batch_rid]), since, 4)
    assert list(found.columns) == [*READ_COLUMNS, *MODEL_FIELDS]
    one = found[found["request_id"] == rid].iloc[0]
    assert one["record_id"] == single["id"] and one["item"] == 0
    assert one["model_version"] == body["model"]["version"] == champion["version"]
    assert one["probability"] == pytest.approx(body["arrest_probability"])
    assert bool(one["decision"]) is body["arrest"]
    assert one["threshold"] == pytest.approx(body["threshold"])
    assert one["latency_ms"] > 0
    assert one["primary_type"] == "NARCOTICS" and one["beat"] == 614 and one["district"] == 6
    assert one["date"] == datetime(2018, 6, 1, 21, 5)
    assert not one["domestic"] and one["domestic"] is not None
    many = found[found["request_id"] == batch_rid].sort_values("item")
    assert list(many["item"]) == [0, 1, 2]
    assert list(many["record_id"].fillna("-")) == [batch[0]["id"], "-", batch[2]["id"]]
    assert list(many["probability"]) == pytest.approx(
        [p["arrest_probability"] for p in resp_b.json()["predictions"]])
    assert many.iloc[2]["primary_type"] == "THEFT"
    assert str(found["logged_at"].dt.tz) == "UTC"


def test_logged_predictions_survive_an_api_restart(settings, champion):
    """Predictions answered just before a rolling restart are written (the old workers flush
    their queue as they stop); the new workers log theirs."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    tag = f"restart-{uuid.uuid4().hex[:8]}"
    before = [record(tag) for _ in range(20)]
    for rec in before:
        assert requests.post(f"{api(settings)}/predict", json=rec, timeout=60).status_code == 200
    seconds = stack.rolling_restart_api(settings)
    after = record(tag)
    assert requests.post(f"{api(settings)}/predict", json=after, timeout=60).status_code == 200
    found = wait_rows(settings, lambda f: f["record_id"].fillna("").str.startswith(tag),
                      since, 21)
    assert set(found["record_id"]) == {r["id"] for r in [*before, after]}
    assert len(found) == 21  # each once
    print(f"\n[figures] rolling restart {seconds:.1f}s; 21 predictions logged across it")


# -- a clean shutdown flushes --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_api(settings, champion, tmp_path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes],
                                                                           str]]]:
    """Start a model server of our own (one worker) with the stack's API environment and the
    given overrides; stopped at the end. Its metrics directory is its own (the stack's API's
    would mix both servers' values)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**overrides: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {**stack.program_envs(settings, None)["api"], "MODEL_CACHE_DIR": "",
               "FASTAPI_PORT": str(port), "API_URL": f"http://127.0.0.1:{port}",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{port}"), **overrides}
        proc = subprocess.Popen(
            [sys.executable, "-m", "chicago_crime.serve.server", "--host",
             "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"],
            env=env, cwd=REPO)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                    return proc, url
            except requests.RequestException:
                pass
            assert proc.poll() is None, "the model server exited"
            time.sleep(0.5)
        raise AssertionError("own model server not ready within 300 s")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_a_clean_shutdown_writes_what_is_queued(settings, own_api):
    """Batches every hour only: nothing reaches PostgreSQL until SIGTERM, then everything."""
    proc, url = own_api(PREDICTION_LOG_FLUSH_SECONDS="3600", PREDICTION_LOG_BATCH_SIZE="100000")
    since = datetime.now(UTC) - timedelta(seconds=5)
    tag = f"flush-{uuid.uuid4().hex[:8]}"
    for _ in range(30):
        assert requests.post(f"{url}/predict", json=record(tag), timeout=60).status_code == 200
    by_tag = lambda f: f["record_id"].fillna("").str.startswith(tag)  # noqa: E731
    time.sleep(2)
    assert len(rows_for(settings, by_tag, since)) == 0  # still queued in the server
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert "prediction_log_queued_rows 30.0" in metrics
    proc.send_signal(signal.SIGTERM)
    # a graceful stop; uvicorn re-raises the signal it handled, so the exit status is SIGTERM's
    assert proc.wait(60) in {0, -signal.SIGTERM}
    assert len(rows_for(settings, by_tag, since)) == 30


# -- PostgreSQL down, then back ------------------------------------------------------------------
def test_the_api_serves_while_postgresql_is_down_and_logs_after(settings, own_api):
    """PostgreSQL stopped (the stack's own, under supervisord): predictions keep being served
    and queued, the failures are counted; once it is back, every queued prediction is
    written. The stack is ready again at the end (its other services recover by themselves)."""
    _, url = own_api(PREDICTION_LOG_FLUSH_SECONDS="0.2")
    since = datetime.now(UTC) - timedelta(seconds=5)
    tag = f"down-{uuid.uuid4().hex[:8]}"
    by_tag = lambda f: f["record_id"].fillna("").str.startswith(tag)  # noqa: E731
    assert requests.post(f"{url}/predict", json=record(tag), timeout=60).status_code == 200
    wait_rows(settings, by_tag, since, 1)
    stopped = time.monotonic()
    assert "stopped" in stack._ctl("stop", "postgres").stdout
    try:
        codes = [requests.post(f"{url}/predict", json=record(tag), timeout=60).status_code
                 for _ in range(40)]
        time.sleep(2)
        metrics = requests.get(f"{url}/metrics", timeout=30).text
    finally:
        started = time.monotonic()
        stack._ctl("start", "postgres")
    assert codes == [200] * 40
    assert "prediction_log_database_up 0.0" in metrics
    failures = [line for line in metrics.splitlines()
                if line.startswith("prediction_log_write_failures_total ")]
    assert failures and float(failures[0].split()[1]) >= 1
    found = wait_rows(settings, by_tag, since, 41, timeout=180)
    recovered = time.monotonic() - started
    assert len(found) == 41
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert "prediction_log_database_up 1.0" in metrics
    assert 'prediction_log_rows_dropped_total{reason="queue_full"}' not in metrics or \
        'prediction_log_rows_dropped_total{reason="queue_full"} 0.0' in metrics
    print(f"\n[figures] PostgreSQL down {started - stopped:.1f}s, 40 predictions served "
          f"meanwhile; all written {recovered:.1f}s after it was started again")
    stack._wait_ready(stack.configured_services(stack.data_source(None)[0]), settings, 600)


# -- retention -----------------------------------------------------------------------------------
def test_rows_older_than_the_retention_are_deleted(settings, champion):
    rid = f"old-{uuid.uuid4().hex}"
    old = datetime.now(UTC) - timedelta(days=settings.prediction_log_retention_days + 1)
    young = datetime.now(UTC) - timedelta(days=settings.prediction_log_retention_days - 1)
    with writer_connect(settings) as conn:
        for item, when in enumerate((old, young)):
            conn.execute(
                f"INSERT INTO {TABLE.name} (request_id, item, logged_at, model_version, record, "
                "probability, decision, threshold, latency_ms) "
                "VALUES (%s, %s, %s, 'test', '{}', 0.5, false, 0.5, 1.0)", (rid, item, when))
    sink = PostgresSink.from_settings(settings)
    try:
        deleted = sink.expire(settings.prediction_log_retention_days)
    finally:
        sink.close()
    assert deleted >= 1
    with writer_connect(settings) as conn:
        left = conn.execute(f"SELECT item FROM {TABLE.name} WHERE request_id = %s",
                            (rid,)).fetchall()
        conn.execute(f"DELETE FROM {TABLE.name} WHERE request_id = %s", (rid,))
    assert left == [(1,)]


# -- least privilege (an attack with the writer's login) ----------------------------------------
def test_the_writer_login_reaches_the_monitoring_database_alone(settings, champion):
    for other in (settings.pg_airflow_db, settings.pg_mlflow_db, settings.pg_mlflow_auth_db,
                  "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects|permission"):
            writer_connect(settings, other).close()
    with writer_connect(settings, autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False, False, False)
        for attack in (f'CREATE DATABASE "x{uuid.uuid4().hex[:6]}"',
                       f'CREATE ROLE "x{uuid.uuid4().hex[:6]}" LOGIN',
                       f'SET ROLE "{settings.pg_user}"',
                       "COPY (SELECT 1) TO PROGRAM 'id'",
                       "SELECT rolpassword FROM pg_authid"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
    # and the platform's role, which reads the log, cannot rewrite it
    with psycopg.connect(host="127.0.0.1", port=settings.pg_port,
                         dbname=settings.pg_monitoring_db, user=settings.pg_user,
                         password=settings.pg_password.get_secret_value(),
                         autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE.name}").fetchone() is not None
        for attack in (f"DELETE FROM {TABLE.name}", f"UPDATE {TABLE.name} SET decision = true",
                       f"TRUNCATE {TABLE.name}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
    # the model server holds this login and no other database password
    env = stack.program_envs(settings, None)["api"]
    assert env["PG_MONITORING_PASSWORD"] == settings.pg_monitoring_password.get_secret_value()
    assert "PG_PASSWORD" not in env and "PG_ADMIN_PASSWORD" not in env
    for name, program_env in stack.program_envs(settings, None).items():
        if name != "api":
            assert "PG_MONITORING_PASSWORD" not in program_env, name
    assert os.environ.get("PG_MONITORING_PASSWORD") in {None, env["PG_MONITORING_PASSWORD"]}
