"""ETL stage functions on the native stack: real S3 (SeaweedFS) and the real MLflow server.

Runs in a throwaway bucket and a throwaway MLflow experiment (both removed afterwards), so it
never touches the platform's own ``data`` bucket or ``etl`` experiment.
Needs `make local-up` (`make local-status` green).
"""

from __future__ import annotations

import uuid

import mlflow
import pandas as pd
import pytest

from chicago_crime import etl, layout, portal, stages
from chicago_crime import record as R
from chicago_crime.lake import Lake

pytestmark = pytest.mark.integration

MONTH = "2018-06"


@pytest.fixture(scope="module")
def stack_run(stack_settings, shared_data):
    tag = uuid.uuid4().hex[:8]
    # The platform's S3 identity is limited to its own bucket: a throwaway bucket is the
    # S3 admin's (as the stack creates the platform's buckets).
    settings = stack_settings.model_copy(update={
        "data_repo_bucket_name": f"it-etl-{tag}", "etl_experiment": f"etl-it-{tag}",
        "aws_access_key_id": stack_settings.s3_admin_access_key_id,
        "aws_secret_access_key": stack_settings.s3_admin_secret_access_key})
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    window = pd.concat([portal.read_export(portal.crimes_export_path(shared_data, m))
                        for m in ("2018-05", "2018-06")], ignore_index=True)
    lake.write_csv(layout.window_key(MONTH), window)
    lake.write_csv(layout.raw_stations_key(MONTH),
                   portal.read_export(shared_data / "police_stations.csv"))
    results = etl.run_all(MONTH, lake, settings)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    yield settings, lake, results, window, client
    experiment = client.get_experiment_by_name(settings.etl_experiment)
    if experiment is not None:
        client.delete_experiment(experiment.experiment_id)
    lake.delete_prefix("0-")
    lake.delete_prefix("1-")
    lake.delete_prefix("2-")
    lake.client.delete_bucket(Bucket=lake.bucket)


def test_stages_run_on_real_s3(stack_run):
    _, lake, results, window, _ = stack_run
    assert all(r["status"] == etl.OK for r in results.values()), results
    assert results["split"]["rows"]["train"] + results["split"]["rows"]["test"] == len(window)
    for stage in stages.NAMES:
        assert lake.exists(layout.report_key(MONTH, stage))
    selector = lake.read_object(layout.fitted_key(MONTH, "select"))
    assert selector.selected_ == results["select"]["columns"]
    train = lake.read_parquet(layout.data_key(MONTH, "balance", "train"))
    assert train[R.TARGET].mean() == pytest.approx(0.5)


def test_rerun_on_real_s3_changes_nothing(stack_run):
    settings, lake, _, _, _ = stack_run
    before = lake.snapshot()
    etl.run_all(MONTH, lake, settings)
    assert lake.snapshot() == before


def test_quality_run_on_real_mlflow(stack_run):
    settings, lake, results, _, client = stack_run
    first = etl.log_quality_run(MONTH, results, settings=settings, lake=lake)
    second = etl.log_quality_run(MONTH, results, settings=settings, lake=lake)
    run = client.get_run(second)
    assert run.data.tags["month"] == MONTH
    assert run.data.metrics["rows_out_split_test"] == results["split"]["rows"]["test"]
    assert run.data.metrics["arrest_rate_after_balancing"] == pytest.approx(0.5)
    assert client.get_run(first).data.tags["latest"] == "false"
    artifacts = [a.path for a in client.list_artifacts(second)]
    assert "reports.json" in artifacts
