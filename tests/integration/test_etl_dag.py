"""etl_with_taskflow on the native stack: real Celery worker, real S3, replayed portal data.

The stack must run with the replay server over ../shared/data/chicago
(`make local-up DATA=../shared/data/chicago`, which `make test` does).
"""

from __future__ import annotations

import mlflow
import pytest
from airflow_client.client import DAGPatchBody

from chicago_crime import layout
from chicago_crime.devtools.airflow_api import connect, wait_for_dag
from chicago_crime.devtools.demo import run_etl
from chicago_crime.ingest import crime_months
from chicago_crime.lake import Lake
from chicago_crime.portal import crimes_export_path, read_export

pytestmark = pytest.mark.integration

DAG_ID = "etl_with_taskflow"
MONTH = "2018-06"


@pytest.fixture(scope="module")
def etl_run(stack_settings):
    af = connect(stack_settings)
    wait_for_dag(af, DAG_ID)
    af.dags.patch_dag(DAG_ID, DAGPatchBody(is_paused=False))
    run = run_etl(af, MONTH)
    return af, run


def test_run_covers_the_month_as_its_data_interval(etl_run):
    _, run = etl_run
    assert run.state == "success"
    assert run.data_interval_start.isoformat().startswith("2018-06-01")
    assert run.data_interval_end.isoformat().startswith("2018-07-01")


def test_raw_partitions_match_the_portal_exports(etl_run, stack_settings, shared_data):
    lake = Lake(settings=stack_settings)
    months = crime_months(lake)
    assert set(layout.month_range(MONTH, 12)) <= set(months)
    for month in ("2017-07", "2018-06"):
        exported = len(read_export(crimes_export_path(shared_data, month)))
        stored = len(lake.read_csv(layout.raw_crimes_key(month)))
        quarantined = (len(lake.read_csv(layout.quarantine_key(month)))
                       if lake.exists(layout.quarantine_key(month)) else 0)
        assert stored + quarantined == exported
        assert lake.exists(layout.raw_stations_key(month))


def test_every_stage_keeps_the_rows(etl_run, stack_settings):
    lake = Lake(settings=stack_settings)
    window = lake.read_csv(layout.window_key(MONTH), usecols=["id"])
    assert window["id"].is_unique
    enriched = lake.read_csv(layout.enriched_key(MONTH), usecols=["id"])
    assert len(enriched) == len(window)
    split_train = lake.read_parquet(layout.stage_key(MONTH, "split", "train.parquet"))
    split_test = lake.read_parquet(layout.stage_key(MONTH, "split", "test.parquet"))
    assert len(split_train) + len(split_test) == len(window)
    assert abs(len(split_test) / len(window) - 0.2) < 0.01
    for stage in ("outliers", "encode", "scale"):
        assert len(lake.read_parquet(layout.stage_key(MONTH, stage, "train.parquet"))) == len(
            split_train)
    for stage in ("outliers", "encode", "scale", "balance", "select"):
        test = lake.read_parquet(layout.stage_key(MONTH, stage, "test.parquet"))
        assert len(test) == len(split_test), f"{stage} changed the test set"
    balanced = lake.read_parquet(layout.stage_key(MONTH, "balance", "train.parquet"))
    assert balanced["arrest"].mean() == pytest.approx(0.5, abs=0.02)
    report = lake.read_json(layout.report_key(MONTH, "select"))
    features = lake.read_parquet(layout.stage_key(MONTH, "select", "train.parquet"))
    assert set(features.columns) - {"arrest"} <= set(report["columns"]) | {"id"}


def test_quality_run_logged_to_mlflow(etl_run, stack_settings):
    mlflow.set_tracking_uri(stack_settings.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=[stack_settings.etl_experiment],
                              filter_string=f"tags.month = '{MONTH}' and tags.latest = 'true'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.rows_out_split_test"] > 0


def test_asset_event_names_the_month(etl_run):
    af, _ = etl_run
    events = af.assets.get_asset_events(order_by=["-timestamp"], limit=20).asset_events
    months = [e.extra.get("month") for e in events if e.extra]
    assert MONTH in months


def test_rerunning_the_month_changes_no_object(etl_run, stack_settings):
    af, _ = etl_run
    lake = Lake(settings=stack_settings)
    # the ETL's objects: the run also triggers monitor_model, whose assessment is new each time
    ours = (layout.MONITORING_PREFIX,)
    before = lake.snapshot(exclude=ours)
    run_etl(af, MONTH)
    assert lake.snapshot(exclude=ours) == before
