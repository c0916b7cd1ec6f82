"""Multiprocess metrics: two real worker processes write into one PROMETHEUS_MULTIPROC_DIR and
``ServerMetrics.exposition`` serves their aggregate (what uvicorn's workers do on the stacks).

The workers are spawned (fresh interpreters): ``PROMETHEUS_MULTIPROC_DIR`` must be set before
they import ``prometheus_client``; this module imports nothing of it at the top for that reason.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
from pathlib import Path

import pytest

ENV = "PROMETHEUS_MULTIPROC_DIR"


def _worker(path: str, n: int, queued: int, version: str, ready: object, done: object,
            retire: bool) -> None:
    os.environ[ENV] = path
    from chicago_crime.serve.metrics import ServerMetrics

    m = ServerMetrics()
    m.model_loaded("chicago-crime", "1", "run1", "sklearn")
    if version != "1":  # a reload: the old version must leave model_info
        m.model_loaded("chicago-crime", version, "run" + version, "sklearn")
    m.record_predictions(version, [True] * n)
    m.log_written(n)
    m.log_queued.set(queued)
    m.model_ready.set(1)
    m.log_db_up.set(1 if queued < 5 else 0)
    m.log_enabled.set(1)
    ready.set()
    done.wait(60)
    if retire:
        m.retire()


def _value(body: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", body, re.M)
    assert match, f"{sample} missing from:\n{body}"
    return float(match.group(1))


def _exposition() -> str:
    from chicago_crime.serve.metrics import ServerMetrics

    payload, _ = ServerMetrics().exposition()
    return payload.decode()


def test_two_worker_processes_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chicago_crime.serve.metrics import sweep_dead

    monkeypatch.setenv(ENV, str(tmp_path))
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    readies = [ctx.Event(), ctx.Event()]
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), 3, 2, "2", readies[0], done, True)),
        ctx.Process(target=_worker, args=(str(tmp_path), 4, 7, "2", readies[1], done, False)),
    ]
    for p in procs:
        p.start()
    try:
        for r in readies:
            assert r.wait(120), "a worker did not start"
        body = _exposition()
        # counters and histograms: the sum of both processes
        assert _value(body, 'predictions_total{arrest="true",model_version="2"}') == 7
        assert _value(body, "prediction_log_rows_written_total") == 7
        assert _value(body, "prediction_batch_records_count") == 2
        assert _value(body, "model_reloads_total") == 4
        # gauges: as their multiprocess_mode says
        assert _value(body, "prediction_log_queued_rows") == 9           # livesum
        assert _value(body, "prediction_log_database_up") == 0           # livemin
        assert _value(body, "prediction_log_enabled") == 1               # livemax
        assert _value(body, "model_ready") == 1                          # livemin
        assert _value(body, 'model_version{model_name="chicago-crime"}') == 2
        info = [line for line in body.splitlines() if line.startswith("model_info{")]
        assert len(info) == 1 and 'version="2"' in info[0], info  # version 1 reloaded away
        assert "pid" not in body  # one series per label set, not one per process
    finally:
        done.set()
        for p in procs:
            p.join(60)
    # worker 0 retired itself; worker 1 exited without it (as a killed worker): its live gauges
    # stay until a sibling sweeps them; its counters stay in the totals
    assert sweep_dead(str(tmp_path)) == [procs[1].pid]
    body = _exposition()
    assert not re.search(r"^prediction_log_queued_rows ", body, re.M)  # no live process left
    assert _value(body, "prediction_log_rows_written_total") == 7


def test_reset_metrics_dir_empties_only_metric_files(tmp_path: Path) -> None:
    from chicago_crime.serve.server import reset_metrics_dir

    shared = tmp_path / "metrics"
    assert reset_metrics_dir(shared) == 0 and shared.is_dir()
    (shared / "counter_123.db").write_bytes(b"x")
    (shared / "gauge_livesum_123.db").write_bytes(b"x")
    (shared / "keep.txt").write_text("not ours")
    assert reset_metrics_dir(shared) == 2
    assert [p.name for p in shared.iterdir()] == ["keep.txt"]


def test_without_the_variable_each_app_has_its_own_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from chicago_crime.serve.metrics import ServerMetrics

    monkeypatch.delenv(ENV, raising=False)
    a, b = ServerMetrics(), ServerMetrics()
    a.log_written(5)
    assert "prediction_log_rows_written_total 5.0" in a.exposition()[0].decode()
    assert "prediction_log_rows_written_total 0.0" in b.exposition()[0].decode()
