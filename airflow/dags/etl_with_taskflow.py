"""Monthly ETL of Chicago crimes: Socrata -> S3 data lake -> ML-ready dataset (an asset).

Every task is a thin call into the ``chicago_crime`` package and passes only small values
(the month, lake keys, counts) through XCom. The run's month is the month of its data
interval start (``@monthly`` with data intervals: the run for 2018-06 covers
[2018-06-01, 2018-07-01) and starts once the month is over). The first run downloads the 12
months ending at that month, later runs only that month. Reruns of a month are idempotent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from chicago_crime import etl, ingest, layout
from chicago_crime.config import get_settings
from chicago_crime.lake import Lake
from chicago_crime.socrata import SocrataClient

# The month's ML-ready dataset; the training DAG is scheduled on it.
ML_READY_DATASET = Asset(name=layout.ML_READY_ASSET_NAME,
                         uri=layout.ml_ready_asset_uri(get_settings().data_repo_bucket_name))
DEFAULT_ARGS = {"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)}


def _continue(result: dict[str, Any]) -> dict[str, Any]:
    """Skip the rest of the run when a stage reports that there is no data."""
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
    # train_model must follow the ETL through the asset without a manual unpause.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    tags=["etl", "chicago_crime"],
    doc_md=__doc__,
)
def etl_with_taskflow():
    @task
    def setup_s3() -> dict[str, Any]:
        return ingest.setup_s3(Lake())

    @task(retries=2, retry_delay=timedelta(minutes=1))
    def download_data(_bucket: dict[str, Any], data_interval_start=None) -> dict[str, Any]:
        month = layout.month_of(data_interval_start)
        settings = get_settings()
        result = ingest.download_data(month, Lake(), SocrataClient(settings), settings)
        return _continue({**result, "reason": f"the portal has no crimes for {month}"})

    @task
    def build_window(download: dict[str, Any]) -> dict[str, Any]:
        return {**ingest.build_window(download["month"], Lake()), "month": download["month"],
                "ingest": {k: download[k] for k in ("months", "rows", "invalid")}}

    @task
    def enrich_data(window: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.enrich_data(window["month"]))

    @task
    def split_data(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.split_data(prev["month"]))

    @task
    def process_outliers(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.process_outliers(prev["month"]))

    @task
    def encode_data(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.encode_data(prev["month"]))

    @task
    def scale_data(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.scale_data(prev["month"]))

    @task
    def balance_data(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.balance_data(prev["month"]))

    @task
    def extract_features(prev: dict[str, Any]) -> dict[str, Any]:
        return _continue(etl.extract_features(prev["month"]))

    @task(outlets=[ML_READY_DATASET])
    def publish_dataset(features: dict[str, Any], window: dict[str, Any],
                        outlet_events=None) -> dict[str, Any]:
        """Log the data-quality run to MLflow and announce the month's ML-ready dataset."""
        month = features["month"]
        ingest_report = {f"invalid_{m}": n for m, n in window["ingest"]["invalid"].items()}
        ingest_report["invalid_rows"] = sum(window["ingest"]["invalid"].values())
        ingest_report["duplicate_rows"] = window["duplicates"]
        run_id = etl.log_quality_run(month, ingest_report=ingest_report)
        outlet_events[ML_READY_DATASET].extra = {
            "month": month, "quality_run_id": run_id, "features": features["features"]}
        return {"month": month, "quality_run_id": run_id}

    window = build_window(download_data(setup_s3()))
    stages = extract_features(balance_data(scale_data(encode_data(process_outliers(
        split_data(enrich_data(window)))))))
    publish_dataset(stages, window)


etl_with_taskflow()
