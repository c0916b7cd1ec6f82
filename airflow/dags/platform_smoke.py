"""A trivial TaskFlow DAG that proves the platform runs tasks on a Celery worker."""

from __future__ import annotations

import socket

import psutil
from airflow.sdk import dag, task


@dag(
    dag_id="platform_smoke",
    schedule=None,
    catchup=False,
    tags=["platform", "smoke"],
    doc_md="Two tasks passing a small value through XCom; used by the integration tests.",
)
def platform_smoke():
    @task
    def where_am_i() -> dict[str, object]:
        ancestors = [" ".join(p.cmdline()) for p in psutil.Process().parents()]
        return {"host": socket.gethostname(),
                "on_celery_worker": any("celery worker" in c for c in ancestors)}

    @task
    def echo(info: dict[str, object]) -> str:
        return f"ran on {info['host']}"

    echo(where_am_i())


platform_smoke()
