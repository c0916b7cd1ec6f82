"""ETL stage functions on an in-process S3 (moto) with real Chicago data."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest

from chicago_crime import etl, layout, portal, stages
from chicago_crime import features as F
from chicago_crime import record as R
from chicago_crime.lake import Lake
from chicago_crime.manifest import Publication, StageIntegrityError, attempt_identity

MONTH = "2018-06"
PROCESSED = [s for s in stages.NAMES if s != stages.ENRICH]
FITTED = [s.name for s in stages.STAGES if s.estimator]
WINDOW_MONTHS = ("2018-04", "2018-05", "2018-06")


@pytest.fixture(scope="module")
def window(shared_data) -> pd.DataFrame:
    frames = [portal.read_export(portal.crimes_export_path(shared_data, m))
              for m in WINDOW_MONTHS]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def stations(shared_data) -> pd.DataFrame:
    return portal.read_export(shared_data / "police_stations.csv")


@pytest.fixture(scope="module")
def module_settings(moto_endpoint, tmp_path_factory):
    """Like ``unit_settings`` but shared by the module (one pipeline run for many tests)."""
    from chicago_crime.config import load_settings

    return load_settings(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        aws_endpoint_url_s3=moto_endpoint, data_repo_bucket_name=f"etl-{os.urandom(4).hex()}",
        mlflow_tracking_uri=f"file://{tmp_path_factory.mktemp('mlruns')}",
    )


@pytest.fixture(scope="module")
def processed(module_settings, window, stations):
    """A lake with the raw window (as the ingestion writes it), stations, and all stages run."""
    lake = Lake(settings=module_settings)
    lake.ensure_bucket()
    lake.write_csv(layout.window_key(MONTH), window)
    lake.write_csv(layout.raw_stations_key(MONTH), stations)
    return lake, etl.run_all(MONTH, lake, module_settings)


def test_all_stages_write_outputs_and_reports(processed, window, module_settings):
    lake, results = processed
    assert list(results) == list(stages.NAMES)
    assert all(r["status"] == etl.OK for r in results.values())
    assert lake.exists(layout.enriched_key(MONTH))
    enriched = lake.read_csv(layout.enriched_key(MONTH))
    assert len(enriched) == len(window)
    assert {F.DIST_COL, F.STATION_COL, "season", "day_time", "day_of_week"} <= set(enriched)
    for stage in PROCESSED:
        for name in ("train.parquet", "test.parquet", "report.json"):
            assert lake.exists(layout.stage_key(MONTH, stage, name)), (stage, name)
        report = lake.read_json(layout.report_key(MONTH, stage))
        assert report["rows_out"] == results[stage]["rows"]
        assert report["seconds"] >= 0
    for stage in FITTED:
        fitted = lake.read_object(layout.fitted_key(MONTH, stage))
        assert type(fitted).__name__ == stages.get(stage).estimator
    split = results["split"]["rows"]
    assert split["train"] + split["test"] == len(window)
    assert split["test"] == pytest.approx(module_settings.test_size * len(window), abs=1)


def test_split_is_stratified(processed):
    lake, _ = processed
    report = lake.read_json(layout.report_key(MONTH, "split"))
    train, test = report["class_balance"]["train"], report["class_balance"]["test"]
    assert abs(train["arrest_rate"] - test["arrest_rate"]) < 0.002


def test_balancing_touches_train_only_and_reaches_ratio(processed):
    lake, results = processed
    scaled_test = lake.get_bytes(layout.stage_key(MONTH, "scale", "test.parquet"))
    balanced_test = lake.get_bytes(layout.stage_key(MONTH, "balance", "test.parquet"))
    assert scaled_test == balanced_test
    train = lake.read_parquet(layout.stage_key(MONTH, "balance", "train.parquet"))
    counts = train[R.TARGET].value_counts()
    assert counts[True] == counts[False]  # default final_ratio = 1.0
    report = lake.read_json(layout.report_key(MONTH, "balance"))
    assert report["details"]["counts_before"]["True"] < counts[True]
    features_test = lake.read_parquet(layout.stage_key(MONTH, "select", "test.parquet"))
    assert len(features_test) == results["split"]["rows"]["test"]
    assert features_test[R.TARGET].mean() == pytest.approx(
        report["class_balance"]["test"]["arrest_rate"], abs=1e-6)


def test_selected_features_and_scores_recorded(processed):
    lake, results = processed
    report = lake.read_json(layout.report_key(MONTH, "select"))
    selected = report["details"]["selected"]
    assert selected == results["select"]["columns"]
    assert set(selected) <= set(report["details"]["scores"])
    train = lake.read_parquet(layout.stage_key(MONTH, "select", "train.parquet"))
    assert list(train.columns) == [*selected, R.TARGET]
    scores = report["details"]["scores"]
    dropped = set(scores) - set(selected)
    assert min(scores[f] for f in selected) >= max(scores[f] for f in dropped)


def _manifests(lake: Lake) -> dict[str, str]:
    return {k: lake.read_json(k)["digest"] for k in lake.list_keys()
            if k.endswith(layout.MANIFEST_FILE)}


def test_rerun_is_byte_identical(processed, module_settings):
    """Every object keeps its bytes, manifests included (an identical rerun keeps the manifest
    of the attempt that first published those bytes), and no claim is left behind."""
    lake, _ = processed
    before, digests = lake.snapshot(), _manifests(lake)
    assert len(digests) == len(stages.NAMES)
    again = etl.run_all(MONTH, lake, module_settings)
    assert all(r["status"] == etl.OK for r in again.values())
    assert lake.snapshot() == before
    assert not [k for k in lake.list_keys() if k.endswith(layout.CLAIM_FILE)]


def test_fitted_steps_ignore_test_data(processed, module_settings):
    """Scrambling the test split changes no fitted step and no train output."""
    lake, _ = processed
    watched = [layout.fitted_key(MONTH, stage) for stage in FITTED]
    watched += [layout.data_key(MONTH, stage, "train") for stage in PROCESSED]
    before = {k: lake.etag(k) for k in watched}
    test_key = layout.stage_key(MONTH, "split", "test.parquet")
    original = lake.get_bytes(test_key)
    test = lake.read_parquet(test_key)
    rng = np.random.RandomState(0)
    test[F.DIST_COL] = rng.rand(len(test)) * 1e6
    test["iucr"] = "9999"
    test["hour"] = 3.0
    lake.write_parquet(test_key, test)
    # written behind the manifest's back: the next stage refuses it
    with pytest.raises(StageIntegrityError, match=r"split/test\.parquet"):
        etl.run_stage(PROCESSED[1], MONTH, lake, module_settings)
    # published properly (as a rerun of split with other test rows would)
    split = etl.published(lake, MONTH, "split")
    pub = Publication(lake, split.prefix, "split", MONTH, attempt_identity(),
                      sources=split.sources)
    pub.claim()
    pub.put("test", test_key, lake.get_bytes(test_key))
    for name in ("train", "report"):
        pub.record(name, split.key(name))
    pub.publish()
    for stage in PROCESSED[1:]:
        assert etl.run_stage(stage, MONTH, lake, module_settings)["status"] == etl.OK
    after = {k: lake.etag(k) for k in watched}
    changed = lake.read_parquet(layout.stage_key(MONTH, "outliers", "test.parquet"))
    lake.put_bytes(test_key, original)  # restore for the other tests of the module
    etl.run_all(MONTH, lake, module_settings)
    assert after == before
    assert changed[F.DIST_COL + "_missing"].sum() == 0  # the new test values did flow through


def test_stage_outputs_match_the_composed_pipeline(processed, module_settings, stations):
    """The stages and the stage table's estimators produce the same scaled features."""
    lake, _ = processed
    train_raw, test_raw = etl.split_raw_window(MONTH, lake, module_settings)
    split_train = lake.read_parquet(layout.stage_key(MONTH, "split", "train.parquet"))
    assert sorted(train_raw["id"]) == sorted(split_train["id"].astype(str))
    steps = stages.estimators(stations, module_settings.random_seed)[:4]  # enrich .. scale
    order = {v: i for i, v in enumerate(split_train["id"].astype(str))}
    train_raw = train_raw.iloc[np.argsort(train_raw["id"].map(order).to_numpy())]
    y = train_raw["arrest"] == "true"
    X = train_raw.reset_index(drop=True)
    for _, step in steps:
        X = step.fit_transform(X, y.reset_index(drop=True))
    scaled = lake.read_parquet(layout.stage_key(MONTH, "scale", "train.parquet"))
    np.testing.assert_allclose(X.to_numpy(dtype=float),
                               scaled.drop(columns=[R.TARGET]).to_numpy(dtype=float),
                               rtol=0, atol=1e-9)
    assert len(test_raw) == len(lake.read_parquet(layout.stage_key(MONTH, "split",
                                                                     "test.parquet")))


def test_typed_window_csv_is_accepted(unit_lake, unit_settings, window, stations):
    """A window CSV written from typed columns (ints, bools) gives the same enrichment."""
    window = window.iloc[::5]
    typed = pd.read_csv(io.StringIO(window.to_csv(index=False)))
    unit_lake.write_csv(layout.window_key(MONTH), typed)
    unit_lake.write_csv(layout.raw_stations_key(MONTH), stations)
    assert etl.run_stage("enrich", MONTH, unit_lake, unit_settings)["status"] == etl.OK
    from_typed = unit_lake.read_csv(layout.enriched_key(MONTH), dtype=str)
    unit_lake.write_csv(layout.window_key(MONTH), window)
    etl.run_stage("enrich", MONTH, unit_lake, unit_settings)
    from_strings = unit_lake.read_csv(layout.enriched_key(MONTH), dtype=str)
    pd.testing.assert_frame_equal(from_typed, from_strings)


def test_no_data_statuses(unit_lake, unit_settings, stations):
    missing = etl.run_all("2019-01", unit_lake, unit_settings)
    assert list(missing) == ["enrich"] and missing["enrich"]["status"] == etl.NO_DATA
    for stage in stages.NAMES:
        assert etl.run_stage(stage, "2019-01", unit_lake, unit_settings)["status"] == etl.NO_DATA
    header = pd.DataFrame(columns=list(R.CRIME_FIELDS))
    unit_lake.write_csv(layout.window_key("2019-02"), header)
    unit_lake.write_csv(layout.raw_stations_key("2019-02"), stations)
    assert etl.run_stage("enrich", "2019-02", unit_lake, unit_settings)["status"] == etl.NO_DATA
    assert not unit_lake.list_keys(layout.processed_prefix("2019-02"))


def test_quality_run_logged_to_mlflow(processed, module_settings, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    lake, results = processed
    ingest = {"rows": 70000, "invalid": {"2018-05": 5, "2018-06": 7}, "quarantined": 12}
    first = etl.log_quality_run(MONTH, settings=module_settings, lake=lake, ingest_report=ingest)
    client = mlflow.MlflowClient(tracking_uri=module_settings.mlflow_tracking_uri)
    run = client.get_run(first)
    m = run.data.metrics
    assert run.data.tags["month"] == MONTH and run.data.tags["latest"] == "true"
    assert m["rows_out_split_train"] == results["split"]["rows"]["train"]
    assert m["rows_out_balance_train"] == results["balance"]["rows"]["train"]
    assert m["arrest_rate_after_balancing"] == pytest.approx(0.5)
    assert 0.1 < m["arrest_rate_before_balancing"] < 0.3
    assert m["ingest_invalid"] == 12 and m["ingest_quarantined"] == 12
    assert {f"seconds_{s}" for s in stages.NAMES} <= set(m)
    assert run.data.params["selected_features"].split(",") == results["select"]["columns"]
    second = etl.log_quality_run(MONTH, results, settings=module_settings)
    assert second != first
    assert client.get_run(first).data.tags["latest"] == "false"
    exp = client.get_experiment_by_name(module_settings.etl_experiment)
    current = client.search_runs([exp.experiment_id],
                                 f"tags.month = '{MONTH}' and tags.latest = 'true'")
    assert [r.info.run_id for r in current] == [second]
