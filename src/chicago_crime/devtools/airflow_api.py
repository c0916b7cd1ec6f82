"""Airflow's REST API v2 through ``apache-airflow-client``, plus the few things it lacks.

The demo, the benchmarks and the stack tests trigger and follow DAG runs exactly as a user
would through the UI. Every endpoint, body and response model comes from the maintained client
(released with the server, pinned to the same version in ``requirements.lock``). This module
adds only what that client does not do:

- **Signing in.** Airflow 3's API takes a JWT that the auth manager issues at
  ``POST /auth/token``. That route belongs to the auth manager, outside ``/api/v2``, so it is
  not in the generated client, whose README asks callers to fetch the token themselves. A token
  of the simple auth manager lasts ``[api_auth] jwt_expiration_time`` (24 h by default), longer
  than any demo, test session or benchmark: one token per connection, no refresh.
- **Waiting for a DAG to be parsed**, failing early on import errors.
- **Following a run to its end** with a deadline and progress lines. The client's
  ``wait_dag_run_until_finished`` is experimental, streams NDJSON and has neither a deadline
  nor task progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from airflow_client.client import (
    ApiClient,
    AssetApi,
    Configuration,
    DAGApi,
    DAGResponse,
    DagRunApi,
    DAGRunResponse,
    ImportErrorApi,
    TaskInstanceApi,
    XComApi,
)
from airflow_client.client.exceptions import NotFoundException

from chicago_crime.config import Settings, get_settings

TERMINAL_RUN_STATES = {"success", "failed"}
DONE_TASK_STATES = {"success", "skipped"}
FAILED_TASK_STATES = {"failed", "upstream_failed"}


class AirflowError(RuntimeError):
    """Signing in failed, a DAG did not appear, or a run did not succeed in time."""


@dataclass(frozen=True)
class Airflow:
    """The client's API groups the project uses, over one signed-in connection."""

    api: ApiClient
    dags: DAGApi
    dag_runs: DagRunApi
    task_instances: TaskInstanceApi
    assets: AssetApi
    xcom: XComApi
    import_errors: ImportErrorApi


def access_token(base_url: str, username: str, password: str) -> str:
    """A JWT from the auth manager's ``POST /auth/token`` (not part of the generated client)."""
    resp = requests.post(f"{base_url}/auth/token", timeout=30,
                         json={"username": username, "password": password})
    if resp.status_code >= 400:
        raise AirflowError(f"Airflow login failed ({resp.status_code}): {resp.text[:300]}")
    return resp.json()["access_token"]


def connect(settings: Settings | None = None, base_url: str | None = None) -> Airflow:
    """Sign in as the platform's admin and return the API groups over one connection."""
    settings = settings or get_settings()
    base_url = (base_url or settings.airflow_url).rstrip("/")
    token = access_token(base_url, settings.airflow_admin_user,
                         settings.airflow_admin_password.get_secret_value())
    api = ApiClient(Configuration(host=base_url, access_token=token))
    return Airflow(api=api, dags=DAGApi(api), dag_runs=DagRunApi(api),
                   task_instances=TaskInstanceApi(api), assets=AssetApi(api), xcom=XComApi(api),
                   import_errors=ImportErrorApi(api))


def wait_for_dag(af: Airflow, dag_id: str, timeout: float = 120.0) -> DAGResponse:
    """Wait until the dag-processor has parsed ``dag_id``; fail early on import errors."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return af.dags.get_dag(dag_id)
        except NotFoundException:
            pass
        errors = af.import_errors.get_import_errors().import_errors
        if errors:
            raise AirflowError("DAG import errors: " + "; ".join(
                f"{e.filename}: {e.stack_trace}" for e in errors))
        if time.monotonic() > deadline:
            raise AirflowError(f"DAG {dag_id} not parsed within {timeout:.0f}s")
        time.sleep(2)


def _progress(af: Airflow, run: DAGRunResponse) -> str:
    tis = af.task_instances.get_task_instances(run.dag_id, run.dag_run_id).task_instances
    done = sum(ti.state in DONE_TASK_STATES for ti in tis)
    running = [ti.task_id for ti in tis if ti.state == "running"]
    return (f"{run.dag_id}: {run.state.value}, {done}/{len(tis)} tasks done"
            + (f", running: {', '.join(running)}" if running else ""))


def wait_for_run(af: Airflow, dag_id: str, run_id: str, timeout: float = 900.0,
                 on_progress: Callable[[str], None] | None = None) -> DAGRunResponse:
    """Poll a run until it ends; report task progress; raise unless it succeeded."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        run = af.dag_runs.get_dag_run(dag_id, run_id)
        if on_progress and (line := _progress(af, run)) != last:
            on_progress(line)
            last = line
        if run.state in TERMINAL_RUN_STATES:
            break
        if time.monotonic() > deadline:
            raise AirflowError(f"{dag_id} run {run_id} still {run.state.value} after "
                               f"{timeout:.0f}s")
        time.sleep(2)
    if run.state != "success":
        failed = [ti.task_id for ti in af.task_instances.get_task_instances(
            dag_id, run_id).task_instances if ti.state in FAILED_TASK_STATES]
        raise AirflowError(f"{dag_id} run {run_id} ended {run.state.value}; failed tasks: "
                           f"{failed}; see the task logs in the Airflow UI")
    return run
