"""The user's journey in one command (``make demo``): ETL -> monitoring -> training -> served
champion.

Assumes the native stack is up (``make demo`` starts it). Triggers ``etl_with_taskflow`` for a
month through Airflow's REST API, lets ``monitor_model`` follow through the dataset asset and,
when it requests retraining (always on a fresh platform: there is no champion yet),
``train_model`` through the retraining asset; waits until the model API serves a champion,
then prints the URLs, logins and a ready-to-paste ``curl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from airflow_client.client import (
    DAGPatchBody,
    DAGRunClearBody,
    DAGRunResponse,
    TriggerDAGRunPostBody,
)
from airflow_client.client.exceptions import ApiException, ConflictException

from chicago_crime import layout
from chicago_crime.config import Settings, get_settings
from chicago_crime.devtools.airflow_api import (
    Airflow,
    AirflowError,
    connect,
    wait_for_dag,
    wait_for_run,
)

ETL_DAG = "etl_with_taskflow"
TRAIN_DAG = "train_model"
MONITOR_DAG = "monitor_model"
#: The pipeline's DAGs, each started by the one before (through an asset).
PIPELINE_DAGS = (ETL_DAG, MONITOR_DAG, TRAIN_DAG)


def default_month(data_dir: str | None) -> str:
    """The newest month of a folder of exports, else the last complete calendar month.

    Without a folder, the one the native stack replays (its remembered data source), if any.
    """
    if not data_dir:
        from chicago_crime.devtools.stack import running_env

        data_dir = running_env()["REPLAY_DATA_DIR"] or None
    if data_dir:
        months = sorted(p.name[:7] for p in (Path(data_dir) / "crimes").glob("*.csv.gz"))
        if not months:
            raise SystemExit(f"no crimes/YYYY-MM.csv.gz exports in {data_dir}")
        return months[-1]
    today = datetime.now(UTC)
    total = today.year * 12 + today.month - 2
    return f"{total // 12:04d}-{total % 12 + 1:02d}"


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def run_etl(af: Airflow, month: str) -> DAGRunResponse:
    """Trigger (or, for a month already run, clear and rerun) the ETL run of ``month``."""
    _, end = layout.month_bounds(month)
    run_id = f"manual__{month}"
    try:
        af.dag_runs.trigger_dag_run(ETL_DAG, TriggerDAGRunPostBody(
            dag_run_id=run_id, logical_date=end.replace(tzinfo=UTC), conf={}))
        say(f"triggered {ETL_DAG} for {month} (run {run_id})")
    except ConflictException:
        af.dag_runs.clear_dag_run(ETL_DAG, run_id, DAGRunClearBody(dry_run=False))
        say(f"{ETL_DAG} already ran for {month}: cleared run {run_id} to run it again")
    return wait_for_run(af, ETL_DAG, run_id, timeout=1800, on_progress=say)


def wait_for_asset_run(af: Airflow, dag_id: str, after: datetime,
                       timeout: float = 1800) -> DAGRunResponse:
    """Wait for the run of ``dag_id`` an asset event queued after ``after``, to its end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = af.dag_runs.get_dag_runs(dag_id, run_after_gte=after, order_by=["-run_after"],
                                        limit=5).dag_runs
        if runs:
            run = runs[0]
            say(f"{dag_id} run {run.dag_run_id} started by the asset event")
            return wait_for_run(af, dag_id, run.dag_run_id, timeout=timeout, on_progress=say)
        time.sleep(3)
    raise AirflowError(f"no {dag_id} run appeared within {timeout:.0f}s")


def wait_for_monitoring(af: Airflow, after: datetime, timeout: float = 900) -> DAGRunResponse:
    """Wait for the monitor_model run the ETL's asset event queued after ``after``."""
    return wait_for_asset_run(af, MONITOR_DAG, after, timeout)


def wait_for_training(af: Airflow, after: datetime, timeout: float = 1800) -> DAGRunResponse:
    """Wait for the train_model run monitor_model's retraining request queued after
    ``after``."""
    return wait_for_asset_run(af, TRAIN_DAG, after, timeout)


def monitor_decision(af: Airflow, run: DAGRunResponse) -> dict[str, Any]:
    """What a monitor_model run decided (``action``, ``retrain``, ``reason``)."""
    return af.xcom.get_xcom_entry(MONITOR_DAG, "decide", run.dag_run_id,
                                  "return_value").actual_instance.value


def follow_etl(af: Airflow, etl_run: DAGRunResponse,
               ) -> tuple[DAGRunResponse, dict[str, Any], DAGRunResponse | None]:
    """After an ETL run: its monitoring run, the decision, and the training run when the
    monitoring requested one (None otherwise)."""
    monitor_run = wait_for_monitoring(af, after=etl_run.start_date)
    decision = monitor_decision(af, monitor_run)
    say(f"{MONITOR_DAG}: {decision['reason']}")
    if not decision["retrain"]:
        return monitor_run, decision, None
    return monitor_run, decision, wait_for_training(af, after=monitor_run.start_date)


def wait_for_champion(settings: Settings, timeout: float = 300) -> dict[str, Any]:
    """Wait until every API worker's /ready says a model is loaded; return GET /model.

    Each worker loads the champion on its own (the reload request reaches one of them, the
    others pick it up at their next registry poll), so /ready must answer 200 on
    ``2 x API_WORKERS`` fresh connections in a row before the API counts as serving it.
    """
    deadline = time.monotonic() + timeout
    in_a_row, needed = 0, 2 * max(1, settings.api_workers)
    reloaded = False
    missing = "the API did not answer"
    while time.monotonic() < deadline:
        try:
            ready = requests.get(f"{settings.api_url}/ready", timeout=5)
            if ready.status_code == 200:
                in_a_row += 1
                if in_a_row >= needed:
                    return requests.get(f"{settings.api_url}/model", timeout=5).json()
                time.sleep(0.2)
                continue
            in_a_row = 0
            missing = ready.json().get("message") or ready.text[:300]
            if not reloaded and settings.api_key:
                requests.post(f"{settings.api_url}/model/reload", timeout=60, headers={
                    "X-API-Key": settings.api_key.get_secret_value()})
                reloaded = True
        except requests.RequestException:
            in_a_row = 0
        time.sleep(2)
    raise RuntimeError(f"the API at {settings.api_url} served no champion within "
                       f"{timeout:.0f}s: {missing}")


# A real record of the portal (2018-06), exactly as the SODA API returns it.
EXAMPLE_RECORD = {
    "id": "11334378", "case_number": "JB289012", "date": "2018-06-01T21:05:00.000",
    "block": "083XX S PAULINA ST", "iucr": "2024", "primary_type": "NARCOTICS",
    "description": "POSS: HEROIN(WHITE)", "location_description": "STREET", "domestic": False,
    "beat": "0614", "district": "006", "ward": "18", "community_area": "71", "fbi_code": "18",
    "x_coordinate": "1166461", "y_coordinate": "1849448", "latitude": "41.742453478",
    "longitude": "-87.665665679",
}


def print_summary(settings: Settings, model: dict[str, Any], seconds: float) -> None:
    body = json.dumps(EXAMPLE_RECORD)
    print(f"""
==========================================================================================
 Champion served in {seconds:.0f}s: {model.get('name')} version {model.get('version')}

 Airflow    http://127.0.0.1:{settings.airflow_port}   (login {settings.airflow_admin_user} / \
AIRFLOW_ADMIN_PASSWORD)  DAGs {ETL_DAG}, {MONITOR_DAG}, {TRAIN_DAG}
 MLflow     http://127.0.0.1:{settings.mlflow_port}   (login {settings.mlflow_admin_username} / \
MLFLOW_ADMIN_PASSWORD)  experiments '{settings.etl_experiment}', \
'{settings.search_experiment}', '{settings.monitor_experiment}', \
model '{settings.model_name}' (alias {settings.champion_alias})
 Data lake  http://127.0.0.1:{settings.minio_port}  bucket '{settings.data_repo_bucket_name}' \
(key {settings.aws_access_key_id} / AWS_SECRET_ACCESS_KEY); \
web UI http://127.0.0.1:{settings.minio_port_ui}
 Model API  http://127.0.0.1:{settings.fastapi_port}/docs
 Passwords  in .env (mode 600; never printed), e.g. `grep AIRFLOW_ADMIN_PASSWORD .env`

 Try it:
   curl -s -X POST http://127.0.0.1:{settings.fastapi_port}/predict \
-H 'Content-Type: application/json' \\
     -d '{body}'

 Stop the platform: `make local-down` / `make down` (Compose); data is kept.
==========================================================================================
""", flush=True)


def run_demo(month: str, settings: Settings | None = None,
             airflow_url: str | None = None) -> dict[str, Any]:
    """The whole journey; returns the served model's description."""
    settings = settings or get_settings()
    started = time.monotonic()
    af = connect(settings, base_url=airflow_url)
    for dag_id in PIPELINE_DAGS:
        wait_for_dag(af, dag_id)
    # the followers first: monitor_model follows the ETL, train_model the monitoring
    for dag_id in reversed(PIPELINE_DAGS):
        af.dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))
    etl_run = run_etl(af, month)
    follow_etl(af, etl_run)
    model = wait_for_champion(settings)
    print_summary(settings, model, time.monotonic() - started)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--month", default="", help="YYYY-MM (default: newest available)")
    parser.add_argument("--data", default="", help="folder of portal exports being replayed")
    parser.add_argument("--airflow-url", default=None,
                        help="Airflow's REST API (default http://BIND_HOST:AIRFLOW_PORT; "
                             "make demo-compose runs the demo inside the api-server container)")
    args = parser.parse_args(argv)
    month = args.month or default_month(args.data or None)
    try:
        run_demo(month, airflow_url=args.airflow_url)
    except (ApiException, RuntimeError) as exc:  # AirflowError is one
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
