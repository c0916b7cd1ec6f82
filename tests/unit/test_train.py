"""Training end to end on a small real lake (moto S3) and a SQLite MLflow registry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from chicago_crime import cli, etl, layout, stages
from chicago_crime import record as R
from chicago_crime.devtools.seed import seed_window_from_exports
from chicago_crime.lake import Lake
from chicago_crime.model import evaluate as ev
from chicago_crime.model import registry, train, tune
from chicago_crime.portal import read_export

MONTH = "2018-06"


@pytest.fixture(scope="module")
def trained(moto_endpoint: str, shared_data: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> dict[str, Any]:
    """A ~4,000-record window through the real ETL stages, then one short training run."""
    from chicago_crime.config import load_settings

    tmp = tmp_path_factory.mktemp("train")
    settings = load_settings(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        aws_endpoint_url_s3=moto_endpoint, data_repo_bucket_name=f"train-{os.urandom(4).hex()}",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", search_trials=2,
        search_timeout_seconds=600,
    )
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    seed_window_from_exports(lake, shared_data, MONTH, months=2, max_rows=5000)
    results = etl.run_all(MONTH, lake, settings)
    assert all(r["status"] == etl.OK for r in results.values()), results
    result = train.run_training(MONTH, settings, lake)
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    return {"settings": settings, "lake": lake, "result": result}


def _client(trained: dict[str, Any]) -> Any:
    return registry.client_for(trained["settings"])


def _model(trained: dict[str, Any], version: str) -> Any:
    mlflow.set_registry_uri(trained["settings"].mlflow_tracking_uri)
    return registry.load_version(trained["settings"].model_name, version)


def test_first_model_is_registered_as_champion_and_challenger(trained: dict[str, Any]) -> None:
    result, name = trained["result"], trained["settings"].model_name
    client = _client(trained)
    assert result["version"] == "1" and result["promoted"] is True
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["gate_decision"] == "promoted"
    assert 0 < float(tags["threshold"]) < 1
    # the gate scored the newest month of the test split (neither model trained on it)
    settings, lake = trained["settings"], trained["lake"]
    _, test = etl.split_raw_window(MONTH, lake, settings)
    newest = test[test["date"].str[:7] == MONTH].reset_index(drop=True)
    assert tags["gate_evaluation"] == (f"{len(newest)} records of {MONTH}'s test split dated "
                                       f"in {MONTH}, the window's newest month")
    p = _model(trained, "1").predict_proba(R.model_frame(newest))[:, 1]
    assert float(tags["gate_challenger_score"]) == pytest.approx(
        ev.gate_score("roc_auc", R.labels(newest), p), abs=1e-6)


def test_temporal_evaluation_beside_both_baselines(trained: dict[str, Any]) -> None:
    """Refit before the window's newest month, scored on it, with both baselines on the same
    rows; logged as temporal_* metrics, evaluation/temporal.json and on the card."""
    settings, result = trained["settings"], trained["result"]
    temporal = result["temporal"]
    assert temporal is not None and temporal["month"] == MONTH
    assert set(temporal) == {"month", "model", "iucr", "native_hgb"}
    for name in ("model", "iucr", "native_hgb"):
        assert 0.6 < temporal[name]["roc_auc"] <= 1 and temporal[name]["rows"] >= 500
    assert temporal["model"]["rows"] == temporal["iucr"]["rows"] == temporal["native_hgb"]["rows"]
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    metrics = run.data.metrics
    assert metrics["temporal_roc_auc"] == pytest.approx(temporal["model"]["roc_auc"], abs=1e-6)
    assert metrics["temporal_baseline_iucr_roc_auc"] == pytest.approx(
        temporal["iucr"]["roc_auc"], abs=1e-6)
    assert metrics["temporal_roc_auc_margin"] == pytest.approx(
        temporal["model"]["roc_auc"] - max(temporal["iucr"]["roc_auc"],
                                           temporal["native_hgb"]["roc_auc"]), abs=1e-6)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    logged = mlflow.artifacts.load_dict(f"runs:/{result['run_id']}/{train.TEMPORAL_ARTIFACT}")
    assert logged["month"] == MONTH and set(logged["metrics"]) == {"model", "iucr", "native_hgb"}
    # which ETL output each family read is logged; one calibrated classifier is served
    params = run.data.params
    assert params["input_stage_hgb_native"] == "outliers" and params["input_stage_hgb"] == "select"
    assert params["input_stage"] == result["input_stage"]
    assert params["search_objective"] == "temporal"
    model = _model(trained, result["version"])
    assert len(model.steps[-1][1].calibrated_classifiers_) == 1


def test_served_pipeline_is_built_from_the_etl_fitted_steps(trained: dict[str, Any]) -> None:
    model = _model(trained, trained["result"]["version"])
    lake = trained["lake"]
    native = trained["result"]["input_stage"] == "outliers"
    assert [name for name, _ in model.steps] == (
        ["enrich", "outliers", "codes", "clf"] if native
        else ["enrich", "outliers", "encode", "scale", "select", "clf"])
    steps = dict(model.steps)
    stored = {s.name: lake.read_object(layout.fitted_key(MONTH, s.name)) for s in stages.served()}
    if not native:
        assert steps["encode"].target_maps_ == stored["encode"].target_maps_
        np.testing.assert_array_equal(steps["scale"].mean_, stored["scale"].mean_)
        assert steps["select"].selected_ == stored["select"].selected_
    assert steps["outliers"].medians_ == stored["outliers"].medians_
    np.testing.assert_array_equal(steps["enrich"].station_x_, stored["enrich"].station_x_)
    assert isinstance(steps["enrich"].stations, dict)  # saved by skops as plain data
    assert not any(hasattr(step, "fit_resample") for _, step in model.steps)  # no sampler


def test_model_reproduces_logged_test_metrics_on_raw_records(trained: dict[str, Any]) -> None:
    settings, lake, result = trained["settings"], trained["lake"], trained["result"]
    model = _model(trained, result["version"])
    data = train.load_month(MONTH, lake, settings)
    p = model.predict_proba(R.model_frame(data.raw_test))[:, 1]
    metrics = ev.binary_metrics(data.y_test, p, result["threshold"])
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result["run_id"])
    assert run.data.metrics["test_roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-12)
    assert run.data.metrics["test_ece"] == pytest.approx(metrics["ece"], abs=1e-12)
    # the served pipeline on raw records == the calibrated classifier on the ETL's stage data
    assert run.data.metrics["pipeline_consistency_max_abs_diff"] < 1e-9
    assert metrics["roc_auc"] > 0.8


def test_pipeline_accepts_records_exactly_as_the_soda_api_returns_them(
        trained: dict[str, Any], shared_data: Path) -> None:
    from chicago_crime.devtools.replay import ReplayServer

    model = _model(trained, trained["result"]["version"])
    with ReplayServer(shared_data) as server:
        response = httpx.get(f"{server.url}/resource/ijzp-q8t2.json", params={
            "$where": "date between '2018-06-10T00:00:00' and '2018-06-15T00:00:00'",
            "$limit": "300", "$order": "id"})
    records = response.json()
    assert len(records) == 300 and isinstance(records[0]["domestic"], bool)
    p_json = model.predict_proba(pd.DataFrame(records))[:, 1]  # every portal field, as sent
    # the same records as strings from the CSV export give the same probabilities
    export = R.model_frame(pd.DataFrame(records)[["id"]].merge(
        read_export(shared_data / "crimes" / f"{MONTH}.csv.gz"), on="id", how="left"))
    p_csv = model.predict_proba(export)[:, 1]
    assert np.all((p_json > 0) & (p_json < 1))
    np.testing.assert_allclose(p_json, p_csv, rtol=0, atol=1e-12)


def test_pyfunc_returns_probabilities_and_serving_check(trained: dict[str, Any]) -> None:
    settings, result = trained["settings"], trained["result"]
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    check = mlflow.artifacts.load_dict(f"runs:/{result['run_id']}/{train.SERVING_CHECK_ARTIFACT}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    out = np.asarray(pyfunc.predict(pd.DataFrame(check["records"])))
    assert out.shape == (len(check["records"]), 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[:, 1], check["probabilities"], rtol=0, atol=1e-12)
    signature = pyfunc.metadata.signature
    required = {c.name for c in signature.inputs.inputs if c.required}
    assert required == set(R.MODEL_REQUIRED_FIELDS)


def test_search_logged_one_nested_run_per_trial(trained: dict[str, Any]) -> None:
    settings, result = trained["settings"], trained["result"]
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.search_experiment)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert len(children) == result["trials"] == 2
    for child in children:
        assert {"model", "balance", "cv_folds"} <= set(child.data.params)
        for metric in ("cv_roc_auc", "cv_pr_auc", "cv_brier", "cv_log_loss"):
            assert metric in child.data.metrics
    parent = client.get_run(result["run_id"])
    card = registry.card(client, settings.model_name, settings.champion_alias)
    assert card is not None and card.version == "1" and card.run_id == result["run_id"]
    data = train.load_month(MONTH, trained["lake"], settings)
    family = train.family_input(data, result["best_params"])
    assert list(card.features) == [str(c) for c in family.X_train.columns]
    # the temporal objective compares the native family only (the encoded inputs' target
    # encoding saw the newest month)
    assert parent.data.params["search_objective"] == "temporal"
    assert {child.data.params["model"] for child in children} == {"hgb_native"}
    assert card.threshold == pytest.approx(result["threshold"], abs=1e-6)
    assert card.metrics["roc_auc"] == pytest.approx(result["metrics"]["roc_auc"], abs=1e-6)
    assert card.month == MONTH and card.window_start <= card.window_end
    assert "features" not in parent.data.params  # the card is the one record of them
    sources = [json.loads(d.dataset.source)["uri"] for d in parent.inputs.dataset_inputs]
    assert sources and all(s.startswith(f"s3://{settings.data_repo_bucket_name}/")
                           for s in sources)
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "evaluation")}
    assert {"evaluation/roc_curve.png", "evaluation/pr_curve.png",
            "evaluation/calibration_curve.png", "evaluation/confusion_matrix.png",
            "evaluation/metrics_by_primary_type.csv",
            "evaluation/permutation_importance.csv"} <= artifacts


def test_retraining_the_same_month_does_not_promote(trained: dict[str, Any]) -> None:
    settings, lake, first = trained["settings"], trained["lake"], trained["result"]
    second = train.run_training(MONTH, settings, lake)
    client = _client(trained)
    assert second["version"] == "2" and second["promoted"] is False
    assert second["challenger_score"] == pytest.approx(first["challenger_score"], abs=1e-12)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(settings.model_name, "challenger").version) == "2"
    assert client.get_model_version(settings.model_name, "2").tags["gate_decision"] == \
        "kept_champion"


def test_cli_prints_the_champion(trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = trained["settings"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    monkeypatch.setenv("MODEL_NAME", settings.model_name)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # required; no .env needed
        monkeypatch.setenv(name, "testing")
    assert cli.main(["champion"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"


def test_seeded_window_keeps_portal_strings(trained: dict[str, Any]) -> None:
    raw = etl.read_window(trained["lake"], MONTH)
    assert raw is not None and len(raw) == 5000
    assert set(raw["arrest"].unique()) <= {"true", "false"}
    assert raw["iucr"].str.len().eq(4).all()  # leading zeros kept (strings, not numbers)
    assert R.MODEL_FIELDS[0] in raw.columns


def test_pip_requirements_are_pinned_from_the_lock_file() -> None:
    pins = dict(r.split("==") for r in train.pip_requirements())
    lock = (Path(__file__).resolve().parents[2] / "requirements.lock").read_text()
    for name, version in pins.items():
        assert f"{name}=={version}" in lock
    assert set(train.MODEL_REQUIREMENTS) == set(pins)


def _versions(trained: dict[str, Any]) -> int:
    name = trained["settings"].model_name
    return len(_client(trained).search_model_versions(f"name='{name}'"))


def test_a_pipeline_mismatch_fails_training_before_registering(
        trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage data that does not belong to the fitted stages: training fails, nothing is
    registered (it used to log a warning and register the model)."""
    settings, lake = trained["settings"], trained["lake"]
    load = train.load_month

    def shifted(month: str, lake: Lake, settings: Any) -> train.MonthData:
        data = load(month, lake, settings)
        # as if from another ETL run than the fitted steps, whichever stage the family reads
        data.X_test = data.X_test + 0.25
        fit_part, test_part = data.inputs[tune.NATIVE_INPUT_STAGE]
        numeric = test_part.select_dtypes("number").columns
        data.inputs[tune.NATIVE_INPUT_STAGE] = (fit_part, test_part.assign(
            **{c: test_part[c] + 1.5 for c in numeric}))
        return data

    monkeypatch.setattr(train, "load_month", shifted)
    before = _versions(trained)
    with pytest.raises(train.PipelineMismatch, match="differs from the classifier"):
        train.run_training(MONTH, settings, lake)
    assert _versions(trained) == before


def test_training_refuses_a_month_whose_stage_is_not_published(trained: dict[str, Any]) -> None:
    settings, lake = trained["settings"], trained["lake"]
    key = layout.manifest_key(MONTH, "select")
    manifest = lake.get_bytes(key)
    lake.delete(key)
    try:
        with pytest.raises(train.TrainingDataMissing, match="'select' is not published"):
            train.run_training(MONTH, settings, lake)
    finally:
        lake.put_bytes(key, manifest)


def test_newer_records_are_dated_after_both_windows(trained: dict[str, Any]) -> None:
    settings, lake = trained["settings"], trained["lake"]
    assert train.newer_records(lake, "2018-06-30", settings) is None  # nothing newer
    found = train.newer_records(lake, "2018-05-31", settings, min_records=50)
    assert found is not None
    records, description = found
    assert (records["date"].str[:10] > "2018-05-31").all()
    _, test = etl.split_raw_window(MONTH, lake, settings)
    june = test[test["date"].str[:10] > "2018-05-31"]
    assert sorted(records["id"]) == sorted(june["id"])  # held-out rows only, none trained on
    assert description == f"{len(records)} records of 2018-06's test split dated after 2018-05-31"
    assert train.newer_records(lake, "2018-05-31", settings, min_records=10**6) is None


def test_backfill_of_an_older_month_keeps_the_champion(trained: dict[str, Any],
                                                       shared_data: Path) -> None:
    """The reliability review's regression: a model trained on data ending 2018-05-31 scored
    better on its own test set and replaced the champion trained through 2018-06-30."""
    settings, lake = trained["settings"], trained["lake"]
    seed_window_from_exports(lake, shared_data, "2018-05", months=2, max_rows=5000)
    assert all(r["status"] == etl.OK for r in etl.run_all("2018-05", lake, settings).values())
    client = _client(trained)
    champion = client.get_model_version_by_alias(settings.model_name, "champion").version
    result = train.run_training("2018-05", settings, lake)
    assert result["promoted"] is False and "older data" in result["reason"]
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == \
        str(champion)
    tags = client.get_model_version(settings.model_name, result["version"]).tags
    assert tags["gate_decision"] == "kept_champion" and tags["window_end"] < "2018-06"
    assert "never promoted automatically" in tags["gate_reason"]


def test_temporal_search_leaves_the_encoded_families_out():
    rng = np.random.default_rng(0)
    rows = 2 * tune.TEMPORAL_MIN_ROWS + 200
    y = rng.integers(0, 2, rows)
    encoded = pd.DataFrame({"f": rng.normal(size=rows)})
    paired = {c for pair in tune.NATIVE_INTERACTIONS for c in pair}
    native = pd.DataFrame({**{c: rng.choice(["A", "B"], rows) for c in sorted(paired)},
                           "hour": rng.integers(0, 24, rows).astype(float)})
    inputs = {tune.input_stage("hgb"): encoded, tune.NATIVE_INPUT_STAGE: native}
    months = np.where(np.arange(rows) < rows // 2, "2018-05", "2018-06")
    temporal = tune.prepare_search_data(inputs, y, months)
    assert temporal.newest is not None and temporal.families == tune.NATIVE_FAMILIES
    cv = tune.prepare_search_data(inputs, y)
    assert cv.newest is None and set(cv.families) == set(tune.FAMILIES)
