"""monitor_model on the native stack: real lake, MLflow registry and tracking, Airflow.

The champion is the demo's (trained on 2018-06, ``served_champion``). The real month 2018-06
finds nothing to retrain; the same month with injected drift (shifted coordinates in process;
half of its records relabelled NARCOTICS through the DAG, the month's raw partition swapped
for the run and restored) requests retraining with the reason, ``train_model`` follows through
the retraining asset, and the report is in MLflow and in the lake.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody

from chicago_crime import layout
from chicago_crime.assets import RETRAIN_REQUESTED_NAME
from chicago_crime.devtools import demo
from chicago_crime.devtools.airflow_api import connect, wait_for_dag, wait_for_run
from chicago_crime.ingest import read_raw_csv, to_csv_bytes
from chicago_crime.lake import Lake
from chicago_crime.model import registry
from chicago_crime.monitoring import monitor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]
MONTH = "2018-06"


@pytest.fixture(scope="module")
def champion(served_champion, stack_settings) -> registry.ModelCard:
    card = registry.card(registry.client_for(stack_settings), stack_settings.model_name,
                         stack_settings.champion_alias)
    assert card is not None and card.month == MONTH, card
    return card


@pytest.fixture(scope="module")
def lake(stack_settings) -> Lake:
    return Lake(settings=stack_settings)


@pytest.fixture(scope="module")
def af(stack_settings) -> Any:
    af = connect(stack_settings)
    for dag_id in (demo.TRAIN_DAG, demo.MONITOR_DAG):
        wait_for_dag(af, dag_id)
        af.dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))
    return af


def type_mix_changed(records: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Half of the records relabelled NARCOTICS (the kind of shift a new reporting rule or a
    police operation would cause)."""
    out = records.copy()
    picked = np.random.default_rng(seed).random(len(out)) < 0.5
    out.loc[picked, "primary_type"] = "NARCOTICS"
    return out


@pytest.fixture
def drifted_partition(lake: Lake) -> Iterator[pd.DataFrame]:
    """The month's raw partition replaced by a drifted copy for one test, then restored."""
    key = layout.raw_crimes_key(MONTH)
    original = lake.get_bytes(key)
    drifted = type_mix_changed(read_raw_csv(lake, key))
    lake.put_bytes(key, to_csv_bytes(drifted), "text/csv")
    try:
        yield drifted
    finally:
        lake.put_bytes(key, original, "text/csv")


def trigger_monitor(af: Any) -> tuple[Any, dict[str, Any]]:
    run_id = f"manual__monitor_test_{uuid.uuid4().hex[:8]}"
    af.dag_runs.trigger_dag_run(demo.MONITOR_DAG, TriggerDAGRunPostBody(
        dag_run_id=run_id, conf={"month": MONTH}))
    run = wait_for_run(af, demo.MONITOR_DAG, run_id, timeout=900)
    return run, demo.monitor_decision(af, run)


def test_the_real_month_needs_no_retraining(champion, stack_settings, lake):
    assessment = monitor.assess(MONTH, stack_settings, lake)
    decision = monitor.decide(assessment, stack_settings)
    assert decision["action"] == monitor.NO_ACTION, decision["reason"]
    features = {d["feature"] for d in assessment["drift"]}
    assert {"enriched/primary_type", "enriched/x_coordinate", "enriched/dist_to_station_ft",
            monitor.CHAMPION_SCORES} <= features
    assert any(f.startswith(monitor.INPUT) for f in features)
    assert assessment["champion"]["version"] == champion.version
    decay = assessment["decay"]
    # the month lies inside the champion's window: only records it never trained on count
    assert decay["excluded_trained_rows"] > decay["unseen_rows"] > monitor.MIN_LABELLED
    assert decay["monthly"]["roc_auc"] > 0.8 and decay["auc_drop"] < stack_settings.monitor_auc_drop


def test_shifted_coordinates_drift(champion, stack_settings, lake):
    records = monitor.month_records(lake, MONTH)
    shifted = records.copy()
    for col in ("x_coordinate", "y_coordinate"):
        shifted[col] = (pd.to_numeric(shifted[col]) + 12_000).astype(str)
    shifted = shifted.drop(columns=["latitude", "longitude"])
    assessment = monitor.assess(MONTH, stack_settings, lake, records=shifted)
    decision = monitor.decide(assessment, stack_settings)
    assert decision["retrain"]
    hits = {d["feature"] for d in monitor.drifted(assessment)}
    assert {"enriched/x_coordinate", "enriched/y_coordinate"} <= hits, hits


def test_injected_drift_requests_retraining_through_the_dag(champion, af, drifted_partition,
                                                            stack_settings, lake):
    run, decision = trigger_monitor(af)
    assert decision["retrain"] and decision["month"] == MONTH
    assert "enriched/primary_type" in decision["reason"], decision["reason"]
    states = {ti.task_id: ti.state for ti in af.task_instances.get_task_instances(
        demo.MONITOR_DAG, run.dag_run_id).task_instances}
    assert states["request_retraining"] == "success" and states["no_action"] == "skipped"
    # the retraining request: an asset event carrying the month and the reason
    events = af.assets.get_asset_events(source_dag_id=demo.MONITOR_DAG,
                                        source_run_id=run.dag_run_id).asset_events
    assert [e.name for e in events] == [RETRAIN_REQUESTED_NAME]
    assert events[0].extra["month"] == MONTH and events[0].extra["reason"] == decision["reason"]
    # train_model follows through the asset (same data: the gate keeps the champion)
    train_run = demo.wait_for_training(af, after=run.start_date)
    assert train_run.run_type == "asset_triggered" and train_run.state == "success"
    result = af.xcom.get_xcom_entry(demo.TRAIN_DAG, "train_and_register", train_run.dag_run_id,
                                    "return_value").actual_instance.value
    assert result["month"] == MONTH
    summary = lake.read_json(layout.monitoring_prefix(MONTH) + monitor.SUMMARY_FILE)
    assert summary["decision"]["action"] == monitor.RETRAIN


def test_real_month_through_the_dag_records_no_action_and_the_report(champion, af,
                                                                     stack_settings, lake):
    run, decision = trigger_monitor(af)
    assert decision["action"] == monitor.NO_ACTION, decision["reason"]
    states = {ti.task_id: ti.state for ti in af.task_instances.get_task_instances(
        demo.MONITOR_DAG, run.dag_run_id).task_instances}
    assert states["no_action"] == "success" and states["request_retraining"] == "skipped"
    assert not af.assets.get_asset_events(source_dag_id=demo.MONITOR_DAG,
                                          source_run_id=run.dag_run_id).asset_events
    published = af.xcom.get_xcom_entry(demo.MONITOR_DAG, "report", run.dag_run_id,
                                       "return_value").actual_instance.value
    client = registry.client_for(stack_settings)
    mlflow_run = client.get_run(published["run_id"])
    assert mlflow_run.data.tags["action"] == monitor.NO_ACTION
    assert mlflow_run.data.tags["latest"] == "true"
    metrics = mlflow_run.data.metrics
    for name in ("monthly_roc_auc", "monthly_brier", "monthly_ece",
                 "drift_psi/enriched/primary_type"):
        assert name in metrics, name
    assert {a.path for a in client.list_artifacts(published["run_id"])} >= {
        monitor.REPORT_FILE, monitor.SUMMARY_FILE}
    prefix = layout.monitoring_prefix(MONTH)
    summary = lake.read_json(prefix + monitor.SUMMARY_FILE)
    assert summary["mlflow_run_id"] == published["run_id"]
    assert summary["decision"]["action"] == monitor.NO_ACTION
    html = lake.get_bytes(prefix + monitor.REPORT_FILE).decode()
    assert f"Monitoring of {MONTH}" in html and "no action" in html
    manifest = lake.read_json(prefix + layout.MANIFEST_FILE)
    assert set(manifest["objects"]) == {"summary", "report"}
