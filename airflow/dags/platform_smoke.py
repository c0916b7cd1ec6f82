"""A trivial TaskFlow DAG that proves the platform runs tasks on a Celery worker."""

from __future__ import annotations

import socket

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
    def where_am_i() -> dict[str, str]:
        return {"host": socket.gethostname()}

    @task
    def echo(info: dict[str, str]) -> str:
        return f"ran on {info['host']}"

    echo(where_am_i())


platform_smoke()
