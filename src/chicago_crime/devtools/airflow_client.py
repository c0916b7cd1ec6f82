"""A small client of Airflow 3's REST API v2 (JWT from ``POST /auth/token``).

Used by the demo, the end-to-end tests and the benchmarks to trigger DAG runs for a logical
month and follow them, exactly as a user would through the UI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import requests

from chicago_crime.config import Settings, get_settings

TERMINAL_RUN_STATES = {"success", "failed"}


class AirflowError(RuntimeError):
    """The Airflow API answered with an error or a run did not succeed."""


class AirflowClient:
    """Trigger and follow DAG runs through the REST API."""

    def __init__(self, settings: Settings | None = None, base_url: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.base_url = (base_url or self.settings.airflow_url).rstrip("/")
        self.session = requests.Session()
        self._token_at = 0.0

    # -- plumbing -------------------------------------------------------------------------------
    def _auth(self) -> None:
        if time.monotonic() - self._token_at < 600 and "Authorization" in self.session.headers:
            return
        resp = requests.post(f"{self.base_url}/auth/token", timeout=30, json={
            "username": self.settings.airflow_admin_user,
            "password": self.settings.airflow_admin_password.get_secret_value(),
        })
        if resp.status_code >= 400:
            raise AirflowError(f"login failed ({resp.status_code}): {resp.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"
        self._token_at = time.monotonic()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self._auth()
        resp = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        if resp.status_code >= 400:
            raise AirflowError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    # -- DAGs -----------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}")

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/importErrors")["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` (fail early on import errors)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.dag(dag_id)
            except AirflowError as exc:
                if "404" not in str(exc):
                    raise
            errors = self.import_errors()
            if errors:
                raise AirflowError(f"DAG import errors: {errors}")
            if time.monotonic() > deadline:
                raise AirflowError(f"DAG {dag_id} not parsed within {timeout:.0f}s")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    # -- runs -----------------------------------------------------------------------------------
    def trigger(self, dag_id: str, logical_date: datetime | str | None = None,
                conf: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
        if isinstance(logical_date, datetime):
            logical_date = logical_date.isoformat()
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def clear_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """Rerun an existing run (the UI's "Clear"): every task runs again."""
        return self.request("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear",
                            json={"dry_run": False})

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900.0,
                     on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll a run until it ends; report task progress; raise unless it succeeded."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            run = self.run(dag_id, run_id)
            if on_progress:
                tis = self.task_instances(dag_id, run_id)
                done = sum(ti["state"] in {"success", "skipped"} for ti in tis)
                running = [ti["task_id"] for ti in tis if ti["state"] == "running"]
                line = (f"{dag_id}: {run['state']}, {done}/{len(tis)} tasks done"
                        + (f", running: {', '.join(running)}" if running else ""))
                if line != last:
                    on_progress(line)
                    last = line
            if run["state"] in TERMINAL_RUN_STATES:
                break
            if time.monotonic() > deadline:
                raise AirflowError(f"{dag_id} run {run_id} still {run['state']} after "
                                   f"{timeout:.0f}s")
            time.sleep(2)
        if run["state"] != "success":
            failed = [ti["task_id"] for ti in self.task_instances(dag_id, run_id)
                      if ti["state"] in {"failed", "upstream_failed"}]
            raise AirflowError(f"{dag_id} run {run_id} ended {run['state']}; failed tasks: "
                               f"{failed}; see the task logs in the Airflow UI")
        return run
