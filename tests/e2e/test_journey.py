"""The user's journey on the native stack, exactly as ``make demo`` runs it, then a rerun.

``run_demo("2018-06")`` (session fixture ``journey``) triggers ``etl_with_taskflow`` through
Airflow's REST API, lets ``monitor_model`` follow through the dataset asset and ``train_model``
through its retraining request, and waits for the API to serve the champion. These tests check
what that left behind: every stage of the lake, the monitoring run and its report, the MLflow
runs, the registry, predictions for real portal records; and that triggering the same month
again changes no object of the ETL's lake, finds no drift (no retraining) and promotes no
second version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from sklearn.metrics import roc_auc_score

from chicago_crime import layout, stages
from chicago_crime.devtools.demo import (
    ETL_DAG,
    MONITOR_DAG,
    TRAIN_DAG,
    follow_etl,
    monitor_decision,
    run_etl,
)
from chicago_crime.ingest import crime_months
from chicago_crime.model import registry
from chicago_crime.portal import crimes_export_path, read_export, to_soda_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

#: Real records posted to the API (a fixed sample of the month's export).
SAMPLE_RECORDS = 1000
SINGLE_RECORDS = 5
PROCESSED = [s for s in stages.NAMES if s != stages.ENRICH]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def portal_records(shared_data: Path, month: str, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` records of the month's export in the SODA API's JSON form (strings, booleans)."""
    df = read_export(crimes_export_path(shared_data, month)).sample(n=n, random_state=seed)
    return json.loads(to_soda_json(df))


def champion_version(mlflow_client: Any, settings: Any) -> Any:
    name = settings.model_name
    version = registry.version_by_alias(mlflow_client, name, settings.champion_alias)
    assert version is not None, f"{name} has no champion"
    return version


def served_model(settings: Any, expected_version: str, timeout: float) -> dict[str, Any]:
    """GET /model, waiting up to ``timeout`` s (one poll interval) for the expected version."""
    deadline = time.monotonic() + timeout
    while True:
        model = requests.get(f"{settings.api_url}/model", timeout=10).json()
        if str(model.get("version")) == expected_version or time.monotonic() > deadline:
            return model
        time.sleep(2)


def raw_rows(lake: Any, key: str) -> int:
    return len(lake.read_csv(key, usecols=["id"]))


def parquet_rows(lake: Any, month: str, stage: str, part: str) -> int:
    return len(lake.read_parquet(layout.stage_key(month, stage, f"{part}.parquet")))


def class_counts(lake: Any, month: str, stage: str) -> dict[bool, int]:
    """Arrests and non-arrests of a stage's train set."""
    train = lake.read_parquet(layout.stage_key(month, stage, "train.parquet"))
    counts = train["arrest"].astype(bool).value_counts()
    return {True: int(counts.get(True, 0)), False: int(counts.get(False, 0))}


# --------------------------------------------------------------------------------------------
# the journey
# --------------------------------------------------------------------------------------------
def test_demo_served_a_champion(journey, airflow, stack_settings) -> None:
    assert journey.model["name"] == stack_settings.model_name
    assert journey.model["alias"] == stack_settings.champion_alias
    for dag_id in (ETL_DAG, MONITOR_DAG, TRAIN_DAG):
        assert airflow.dags.get_dag(dag_id).is_paused is False
    etl_run = airflow.dag_runs.get_dag_run(ETL_DAG, f"manual__{journey.month}")
    assert etl_run.state == "success"
    assert etl_run.data_interval_start.isoformat().startswith(f"{journey.month}-01")
    monitor_run = asset_runs(airflow, MONITOR_DAG, etl_run.start_date)[-1]
    assert monitor_run.state == "success"
    decision = monitor_decision(airflow, monitor_run)
    trained = [r for r in asset_runs(airflow, TRAIN_DAG, monitor_run.start_date)
               if r.state == "success"]
    # a fresh platform has no champion: the monitoring asks for the first training; on a
    # platform that already serves this month's champion it finds nothing to retrain
    assert bool(trained) == decision["retrain"], (decision, trained)


def asset_runs(airflow: Any, dag_id: str, after: Any) -> list[Any]:
    """Runs of ``dag_id`` an asset event started after ``after``, oldest first."""
    runs = airflow.dag_runs.get_dag_runs(dag_id, order_by=["run_after"], limit=100).dag_runs
    return [r for r in runs if r.run_type == "asset_triggered" and r.run_after >= after]


def test_monitoring_run_of_the_demo_month(journey, airflow, lake, mlflow_client,
                                          stack_settings) -> None:
    """The demo month's monitor_model run: its decision, its MLflow run with the report and
    the summary, the same files in the lake."""
    etl_run = airflow.dag_runs.get_dag_run(ETL_DAG, f"manual__{journey.month}")
    monitor_run = asset_runs(airflow, MONITOR_DAG, etl_run.start_date)[-1]
    decision = monitor_decision(airflow, monitor_run)
    assert decision["month"] == journey.month and decision["reason"]
    branch = "request_retraining" if decision["retrain"] else "no_action"
    states = {ti.task_id: ti.state for ti in airflow.task_instances.get_task_instances(
        MONITOR_DAG, monitor_run.dag_run_id).task_instances}
    assert states[branch] == "success" and "skipped" in states.values(), states
    experiment = mlflow_client.get_experiment_by_name(stack_settings.monitor_experiment)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.month = '{journey.month}' and tags.latest = 'true'")
    assert len(runs) == 1
    listed = {a.path for a in mlflow_client.list_artifacts(runs[0].info.run_id)}
    assert {"report.html", "summary.json"} <= listed
    prefix = layout.monitoring_prefix(journey.month)
    summary = lake.read_json(prefix + "summary.json")
    assert summary["decision"]["action"] == runs[0].data.tags["action"]
    assert lake.get_bytes(prefix + "report.html").startswith(b"<!doctype html>")
    assert lake.exists(prefix + layout.MANIFEST_FILE)


def test_raw_partitions_hold_every_exported_record(journey, lake, shared_data,
                                                   stack_settings) -> None:
    window_months = layout.month_range(journey.month, stack_settings.etl_first_run_months)
    assert set(window_months) <= set(crime_months(lake))
    for month in window_months:
        assert lake.exists(layout.raw_stations_key(month)), month
        exported = len(read_export(crimes_export_path(shared_data, month)))
        quarantine = layout.quarantine_key(month)
        quarantined = raw_rows(lake, quarantine) if lake.exists(quarantine) else 0
        assert raw_rows(lake, layout.raw_crimes_key(month)) + quarantined == exported, month


def test_window_and_enriched_rows(journey, lake, stack_settings) -> None:
    months = layout.month_range(journey.month, stack_settings.etl_first_run_months)
    ids = pd.concat([lake.read_csv(layout.raw_crimes_key(m), usecols=["id"], dtype=str)["id"]
                     for m in months])
    window = lake.read_csv(layout.window_key(journey.month), usecols=["id"], dtype=str)["id"]
    assert window.is_unique
    assert set(window) == set(ids)  # deduplicated union of the 12 monthly partitions
    assert raw_rows(lake, layout.enriched_key(journey.month)) == len(window)
    for key in (layout.report_key(journey.month, "enrich"),
                layout.fitted_key(journey.month, "enrich")):
        assert lake.exists(key), key


def test_every_processed_stage_is_complete_and_consistent(journey, lake) -> None:
    month = journey.month
    window = raw_rows(lake, layout.window_key(month))
    rows: dict[str, dict[str, int]] = {}
    for stage in PROCESSED:
        expected = {f"{part}.parquet" for part in ("train", "test")} | {"report.json"}
        if stages.get(stage).estimator:
            expected.add(stages.get(stage).fitted_file)
        present = {k.rsplit("/", 1)[1]
                   for k in lake.list_keys(layout.processed_prefix(month) + stage + "/")}
        assert expected <= present, f"{stage}: missing {expected - present}"
        rows[stage] = {part: parquet_rows(lake, month, stage, part) for part in ("train", "test")}
        assert lake.read_json(layout.report_key(month, stage))["rows_out"] == rows[stage], stage
    split = rows["split"]
    assert split["train"] + split["test"] == window
    assert split["test"] / window == pytest.approx(0.2, abs=0.01)
    for stage in PROCESSED:
        assert rows[stage]["test"] == split["test"], f"{stage} changed the test set"
    for stage in ("outliers", "encode", "scale"):
        assert rows[stage]["train"] == split["train"], f"{stage} changed the train set"
    assert rows["select"]["train"] == rows["balance"]["train"]
    # balancing: SMOTE adds arrests, under-sampling drops non-arrests, down to 50/50
    before = class_counts(lake, month, "split")
    after = class_counts(lake, month, "balance")
    assert after[True] == after[False]
    assert after[True] >= before[True] and after[False] <= before[False]
    assert class_counts(lake, month, "select") == after


def test_etl_quality_run_in_mlflow(journey, lake, mlflow_client, stack_settings) -> None:
    experiment = mlflow_client.get_experiment_by_name(stack_settings.etl_experiment)
    assert experiment is not None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.month = '{journey.month}' and tags.latest = 'true'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for part in ("train", "test"):
        assert metrics[f"rows_out_split_{part}"] == parquet_rows(lake, journey.month, "split",
                                                                 part)
    assert metrics["rows_out_balance_train"] == parquet_rows(lake, journey.month, "balance",
                                                              "train")


def test_search_experiment_has_nested_trials(journey, mlflow_client, stack_settings) -> None:
    champion = champion_version(mlflow_client, stack_settings)
    parent = mlflow_client.get_run(champion.run_id)
    experiment = mlflow_client.get_experiment(parent.info.experiment_id)
    assert experiment.name == stack_settings.search_experiment
    assert parent.data.tags["month"] == journey.month
    assert "mlflow.parentRunId" not in parent.data.tags
    children = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) >= 1
    assert len(children) == int(parent.data.metrics["search_trials_completed"])
    assert parent.data.metrics["test_roc_auc"] > 0.8


def test_registered_champion(journey, mlflow_client, stack_settings) -> None:
    champion = champion_version(mlflow_client, stack_settings)
    assert champion.status == "READY"
    assert stack_settings.champion_alias in champion.aliases
    assert champion.tags["month"] == journey.month
    assert float(champion.tags["threshold"]) > 0
    assert str(journey.model["version"]) == str(champion.version)


def test_predict_real_records(journey, shared_data, mlflow_client, stack_settings) -> None:
    champion = str(champion_version(mlflow_client, stack_settings).version)
    served = served_model(stack_settings, champion, 2 * stack_settings.model_poll_seconds + 30)
    assert str(served["version"]) == champion
    records = portal_records(shared_data, journey.month, SAMPLE_RECORDS)
    assert all(isinstance(r.get("arrest"), bool) for r in records)

    batch = requests.post(f"{stack_settings.api_url}/predict/batch", json={"records": records},
                          timeout=120)
    assert batch.status_code == 200, batch.text[:500]
    body = batch.json()
    assert str(body["model"]["version"]) == champion
    probabilities = [p["arrest_probability"] for p in body["predictions"]]
    assert len(probabilities) == len(records)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert all(p["arrest"] == (p["arrest_probability"] >= body["threshold"])
               for p in body["predictions"])
    # the champion separates arrests from the rest on real records
    assert roc_auc_score([r["arrest"] for r in records], probabilities) > 0.75

    for i, record in enumerate(records[:SINGLE_RECORDS]):
        single = requests.post(f"{stack_settings.api_url}/predict", json=record, timeout=30)
        assert single.status_code == 200, single.text[:500]
        answer = single.json()
        assert str(answer["model"]["version"]) == champion
        assert 0.0 <= answer["arrest_probability"] <= 1.0
        # the batch answers in the order of its records
        assert answer["arrest_probability"] == pytest.approx(probabilities[i], abs=1e-9)


# --------------------------------------------------------------------------------------------
# the same month again
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rerun(journey, airflow, lake, mlflow_client, stack_settings) -> dict[str, Any]:
    """Trigger the month again (the demo's own steps); record the state before and after."""
    name = stack_settings.model_name
    before = {
        "snapshot": lake.snapshot(exclude=(layout.MONITORING_PREFIX,)),
        "champion": str(champion_version(mlflow_client, stack_settings).version),
        "versions": {str(v.version) for v in mlflow_client.search_model_versions(
            f"name = '{name}'")},
        "train_runs": {r.dag_run_id for r in airflow.dag_runs.get_dag_runs(
            TRAIN_DAG, limit=100).dag_runs},
    }
    etl_run = run_etl(airflow, journey.month)
    monitor_run, decision, train_run = follow_etl(airflow, etl_run)
    after = {
        "snapshot": lake.snapshot(exclude=(layout.MONITORING_PREFIX,)),
        "champion": str(champion_version(mlflow_client, stack_settings).version),
        "versions": {str(v.version) for v in mlflow_client.search_model_versions(
            f"name = '{name}'")},
    }
    return {"before": before, "after": after, "etl_run": etl_run, "monitor_run": monitor_run,
            "decision": decision, "train_run": train_run}


def test_rerun_ran_etl_and_monitoring_again_and_no_training(rerun) -> None:
    """The same month again: the champion was trained on it, nothing drifted, no retraining."""
    assert rerun["etl_run"].state == "success"
    assert rerun["monitor_run"].state == "success"
    assert rerun["decision"]["action"] == "none", rerun["decision"]["reason"]
    assert rerun["train_run"] is None


def test_rerun_changes_no_object_of_the_lake(rerun) -> None:
    # the ETL's objects; the monitoring writes a new assessment (its time) on every run
    before, after = rerun["before"]["snapshot"], rerun["after"]["snapshot"]
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"objects rewritten with new content: {changed[:10]}"


def test_rerun_promotes_no_second_version(rerun, mlflow_client, stack_settings) -> None:
    before, after = rerun["before"], rerun["after"]
    assert after["champion"] == before["champion"]
    for version in after["versions"] - before["versions"]:  # challengers of the rerun
        tags = mlflow_client.get_model_version(stack_settings.model_name, version).tags
        assert tags["gate_decision"] == "kept_champion", (version, tags.get("gate_reason"))


def test_api_still_serves_the_champion(rerun, stack_settings) -> None:
    served = requests.get(f"{stack_settings.api_url}/model", timeout=10).json()
    assert str(served["version"]) == rerun["before"]["champion"]
