"""The native stack heals itself: services killed for real come back without any command, a
task on a killed Celery worker is retried and its run succeeds, and a rolling restart of the
model server under load loses no request. Each test prints its figures (``pytest -s`` or the
``-rA`` summary shows them; docs/operations.md records them)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from airflow_client.client import DAGPatchBody, TaskInstanceResponse

from chicago_crime.devtools import demo, stack, worker_name
from chicago_crime.devtools.airflow_api import connect, wait_for_dag
from chicago_crime.devtools.launch import tagged_processes
from chicago_crime.devtools.loadgen import Load
from chicago_crime.stages import STAGES

# A fresh stack trains a champion first (minutes on a busy 2-core box).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
MONTH = "2018-06"


def report(title: str, **figures: Any) -> None:
    print(f"\n[figures] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()),
          flush=True)


def pid_of(name: str) -> int:
    out = stack._ctl("pid", name).stdout.strip()
    return int(out) if out.isdigit() else 0


def all_pids() -> dict[str, int]:
    return {name: pid_of(name) for name in stack._states()}


@pytest.fixture(scope="module")
def settings():
    return stack.stack_settings()


@pytest.fixture(scope="module")
def champion(served_champion) -> dict[str, Any]:
    """A champion served by the API (the training test registers one; else the demo's path)."""
    return served_champion


@pytest.fixture
def load(settings, champion) -> Iterator[Load]:
    with Load(f"{settings.api_url}/predict", demo.EXAMPLE_RECORD, concurrency=4) as running:
        yield running


def wait_until(what: str, probe: Any, timeout: float, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until ``probe()`` is true."""
    started = time.monotonic()
    since = started if since is None else since
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


def api_ready(settings) -> bool:
    ready, _, detail = stack.api_readiness(settings)
    return ready and detail.startswith("ready")


def test_rolling_restart_of_the_api_under_load_loses_no_request(settings, load):
    others = {k: v for k, v in all_pids().items() if k != "api"}
    master = pid_of("api")
    seconds = stack.rolling_restart_api(settings)
    time.sleep(2)
    report("rolling API restart under load (concurrency 4, new connection per request)",
           restart_seconds=round(seconds, 1), **load.summary())
    assert pid_of("api") == master  # the manager stayed; its workers were replaced
    # No request is refused and none gets an error answer. The one loss uvicorn allows: a
    # connection the old worker accepted just before it stops, whose request it had not read
    # yet, is closed (a connection error before any answer: safe for a client to retry). Seen
    # once in ~4,000 requests on a loaded machine, never on a quiet one (docs/operations.md).
    answered_badly = {k: v for k, v in load.failures.items() if k != "ConnectionError"}
    assert not answered_badly, load.failures
    assert load.failures.get("ConnectionError", 0) <= settings.api_workers, load.failures
    assert api_ready(settings)
    assert {k: v for k, v in all_pids().items() if k != "api"} == others


def test_a_sigkilled_api_worker_process_is_replaced(settings, load):
    master = pid_of("api")
    victim = stack._worker_pids(master).pop()
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    back = wait_until("a new worker process", lambda: len(
        stack._worker_pids(master) - {victim}) >= settings.api_workers, 300, killed)
    report("SIGKILL of one API worker process (the other one serves meanwhile)",
           replacement_started_s=round(back, 1), **load.summary())
    # Lost: at most the requests that worker held when it died (each load thread has one in
    # flight), cut before or during the answer; no error status, nothing after the kill.
    assert set(load.failures) <= {"ConnectionError", "ChunkedEncodingError"}, load.failures
    assert sum(load.failures.values()) <= load.concurrency, load.failures


def test_a_sigkilled_api_comes_back_by_itself(settings, load):
    others = {k: v for k, v in all_pids().items() if k != "api"}
    master = pid_of("api")
    old_workers = stack._worker_pids(master)
    killed = time.monotonic()
    os.kill(master, signal.SIGKILL)  # the manager: supervisord restarts it
    restarted = wait_until("a new api process",
                           lambda: pid_of("api") not in {0, master}, 60, killed)
    ready = wait_until("the API ready again (new workers)",
                       lambda: pid_of("api") not in {0, master}
                       and not any(psutil.pid_exists(p) for p in old_workers)
                       and api_ready(settings), 300, killed)
    total = time.monotonic() - killed
    time.sleep(1)
    report("SIGKILL of the API (uvicorn manager)", restarted_after_s=round(restarted, 1),
           ready_after_s=round(total, 1), **load.summary())
    assert ready < 300
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in old_workers), "the killed manager's workers were left running"
    assert {k: v for k, v in all_pids().items() if k != "api"} == others
    assert "api crashed" in stack.ALERTS.read_text()


def test_a_task_on_a_sigkilled_worker_is_retried_and_its_run_succeeds(settings, champion):
    af = connect(settings)
    wait_for_dag(af, demo.ETL_DAG)
    af.dags.patch_dag(demo.ETL_DAG, DAGPatchBody(is_paused=False))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["run"] = demo.run_etl(af, MONTH)
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    run_id = f"manual__{MONTH}"
    long_tasks = {stage.task_id for stage in STAGES}  # the ETL stages after ingestion

    def running_task() -> TaskInstanceResponse | None:
        try:
            tis = af.task_instances.get_task_instances(demo.ETL_DAG, run_id).task_instances
        except Exception:
            return None
        return next((ti for ti in tis if ti.task_id in long_tasks and ti.state == "running"),
                    None)

    wait_until("a long ETL task running", lambda: running_task() is not None, 600)
    victim = running_task()
    assert victim is not None
    service = worker_name.worker_of(victim.hostname)  # the worker running it
    worker = pid_of(service)
    old_tag = (stack.SVC / "run" / f"{service}.launch").read_text().strip()
    others = {k: v for k, v in all_pids().items() if k != service}
    killed = time.monotonic()
    os.kill(worker, signal.SIGKILL)

    def task_state() -> TaskInstanceResponse:
        tis = af.task_instances.get_task_instances(demo.ETL_DAG, run_id).task_instances
        return next(ti for ti in tis if ti.task_id == victim.task_id)

    restarted = wait_until("a new worker process",
                           lambda: pid_of(service) not in {0, worker}, 60, killed)
    detected = wait_until("the killed attempt failed",
                          lambda: task_state().state != "running"
                          or task_state().try_number > victim.try_number, 300, killed)
    back = wait_until("the worker answering again",
                      lambda: stack.app_probe(service, settings)[0], 120, killed)
    orphans = tagged_processes(old_tag)
    retried = wait_until("the task retried",
                         lambda: task_state().try_number > victim.try_number
                         and task_state().state in {"running", "success"}, 300, killed)
    runner.join(timeout=900)
    total = time.monotonic() - killed
    report(f"SIGKILL of the Celery worker ({service}) during {victim.task_id} (seconds after "
           "the kill)", worker_restarted_s=round(restarted, 1),
           worker_answers_ping_s=round(back, 1), attempt_failed_s=round(detected, 1),
           retry_running_s=round(retried, 1), run_success_s=round(total, 1),
           orphans_left=len(orphans))
    assert "error" not in outcome, outcome.get("error")
    assert outcome["run"].state == "success"
    assert not orphans, [p.pid for p in orphans]
    assert retried < 120  # the heartbeat timeout (30 s) + the retry delay, not 5 minutes
    assert {k: v for k, v in all_pids().items() if k != service} == others
    log = (stack.LOGS / f"{service}.log").read_text(errors="ignore")
    assert "address already in use" not in log
