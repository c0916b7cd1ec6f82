"""Airflow assets shared by the DAGs (imported by etl_with_taskflow and train_model)."""

from __future__ import annotations

from airflow.sdk import Asset

from chicago_crime.config import get_settings

# The ML-ready dataset of a month (features stage + fitted steps); each asset event carries
# ``extra={"month": "YYYY-MM"}``, so the training DAG knows which month to train on.
ML_READY_DATASET = Asset(
    name="chicago_crimes_ml_ready",
    uri=f"s3://{get_settings().data_repo_bucket_name}/2-processed-data/",
    group="chicago_crime",
)
