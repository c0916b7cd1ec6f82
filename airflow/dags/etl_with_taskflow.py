"""Monthly ETL of Chicago crimes: Socrata -> S3 data lake -> ML-ready dataset (an asset).

The DAG only declares the graph: every task is a thin call into the ``chicago_crime`` package,
imported inside the task (the dag-processor parses this file without pandas, scikit-learn or
settings), and passes only small values (the month, lake keys, counts) through XCom. After
ingestion (``setup_s3`` -> ``download_data`` -> ``build_window``) there is one task per row of
the stage table (:mod:`chicago_crime.stages`), named like its stage: adding a stage adds a
task without editing this file. ``publish_dataset`` logs the month's data-quality run and
updates the asset ``monitor_model`` is scheduled on (which requests ``train_model`` when the
month drifted or the champion decayed).

The run's month is the month of its data interval start (``@monthly`` with data intervals:
the run for 2018-06 covers [2018-06-01, 2018-07-01) and starts once the month is over). The
first run downloads the 12 months ending at that month, later runs that month plus any month of
its window still missing (an interrupted backfill is completed by the next run). Each stage
publishes its outputs with a manifest written last (``chicago_crime.manifest``) that names this
task instance and try. Reruns of a month are idempotent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from chicago_crime.assets import ML_READY
from chicago_crime.stages import STAGES

DEFAULT_ARGS = {"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)}


def _continue(result: dict[str, Any]) -> dict[str, Any]:
    """Skip the rest of the run when a stage reports that there is no data."""
    from airflow.sdk.exceptions import AirflowSkipException

    if result.get("status") == "no_data":
        raise AirflowSkipException(f"no data: {result.get('reason', result)}")
    return result


@dag(
    dag_id="etl_with_taskflow",
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
    start_date=pendulum.datetime(2018, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Unpaused from the start: the UI's Trigger button unpauses only the DAG it triggers, and
    # monitor_model must follow the ETL through the asset without a manual unpause.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    tags=["etl", "chicago_crime"],
    doc_md=__doc__,
)
def etl_with_taskflow():
    @task
    def setup_s3() -> dict[str, Any]:
        from chicago_crime.ingest import setup_s3
        from chicago_crime.lake import Lake

        return setup_s3(Lake())

    @task(retries=2, retry_delay=timedelta(minutes=1))
    def download_data(_bucket: dict[str, Any], data_interval_start=None) -> dict[str, Any]:
        from chicago_crime.config import get_settings
        from chicago_crime.ingest import download_data
        from chicago_crime.lake import Lake
        from chicago_crime.layout import month_of
        from chicago_crime.socrata import SocrataClient

        month = month_of(data_interval_start)
        settings = get_settings()
        result = download_data(month, Lake(), SocrataClient(settings), settings)
        return _continue({**result, "reason": f"the portal has no crimes for {month}"})

    @task
    def build_window(download: dict[str, Any]) -> dict[str, Any]:
        from chicago_crime.ingest import build_window
        from chicago_crime.lake import Lake

        return {**build_window(download["month"], Lake()), "month": download["month"],
                "ingest": {k: download[k] for k in ("months", "rows", "invalid")}}

    @task
    def run_stage(previous: dict[str, Any], stage: str, ti=None) -> dict[str, Any]:
        """One stage of the table (the task id is the stage's name); its manifest names this
        task instance and try."""
        from chicago_crime.etl import run_stage
        from chicago_crime.manifest import attempt_identity

        attempt = attempt_identity(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                   try_number=ti.try_number)
        return _continue(run_stage(stage, previous["month"], attempt=attempt))

    @task(outlets=[ML_READY])
    def publish_dataset(final: dict[str, Any], window: dict[str, Any],
                        outlet_events=None) -> dict[str, Any]:
        """Log the data-quality run to MLflow and announce the month's ML-ready dataset."""
        from chicago_crime.etl import log_quality_run

        month = final["month"]
        invalid = window["ingest"]["invalid"]
        ingest_report = {f"invalid_{m}": n for m, n in invalid.items()}
        ingest_report["invalid_rows"] = sum(invalid.values())
        ingest_report["duplicate_rows"] = window["duplicates"]
        run_id = log_quality_run(month, ingest_report=ingest_report)
        outlet_events[ML_READY].extra = {
            "month": month, "quality_run_id": run_id, "features": final["columns"]}
        return {"month": month, "quality_run_id": run_id}

    window = build_window(download_data(setup_s3()))
    previous = window
    for stage in STAGES:
        previous = run_stage.override(task_id=stage.task_id, doc_md=stage.description)(
            previous, stage=stage.name)
    publish_dataset(previous, window)


etl_with_taskflow()
