"""The notebooks' analysis helpers: tables, quality checks, registry look-ups, plots."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest

from chicago_crime import etl, layout
from chicago_crime import features as F
from chicago_crime import record as R
from chicago_crime.ingest import to_csv_bytes
from chicago_crime.model import analysis, registry
from chicago_crime.model import evaluate as ev
from chicago_crime.validation import REASON

matplotlib.use("Agg", force=True)
RNG = np.random.default_rng(11)


def _frame(n: int = 600) -> pd.DataFrame:
    """An enriched-like frame: groups, distances (some missing), string labels."""
    district = RNG.choice(["1", "2", "10", None], size=n)
    arrest = RNG.choice(["true", "false", None], size=n, p=[0.3, 0.65, 0.05])
    dist = RNG.uniform(0, 20_000, size=n)
    dist[RNG.random(n) < 0.05] = np.nan
    return pd.DataFrame({"district": district, R.TARGET: arrest, F.DIST_COL: dist,
                         "x_coordinate": np.where(np.isnan(dist), np.nan, 1.1e6),
                         "y_coordinate": np.where(np.isnan(dist), np.nan, 1.9e6)})


# --------------------------------------------------------------------------------------------
# parameters and tables
# --------------------------------------------------------------------------------------------
def test_notebook_month_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(analysis.MONTH_ENV, raising=False)
    assert analysis.notebook_month() == analysis.DEFAULT_MONTH
    monkeypatch.setenv(analysis.MONTH_ENV, "2017-11")
    assert analysis.notebook_month() == "2017-11"
    for bad in ("2017-13", "2017-1", "June"):
        monkeypatch.setenv(analysis.MONTH_ENV, bad)
        with pytest.raises(ValueError, match=analysis.MONTH_ENV):
            analysis.notebook_month()


def test_arrest_rates_match_a_direct_groupby() -> None:
    df = _frame()
    table = analysis.arrest_rates(df, "district")
    labelled = df[df[R.TARGET].notna()]
    expected = (labelled.assign(y=labelled[R.TARGET] == "true",
                                g=labelled["district"].fillna(F.MISSING))
                .groupby("g")["y"].agg(["size", "sum", "mean"]))
    got = table.set_index("district")
    assert set(got.index) == set(expected.index) and F.MISSING in got.index
    assert got["rows"].sum() == len(labelled)  # unlabelled rows are left out
    for group, row in expected.iterrows():
        assert got.loc[group, "rows"] == row["size"]
        assert got.loc[group, "arrests"] == row["sum"]
        assert got.loc[group, "arrest_rate"] == pytest.approx(row["mean"])
    assert list(table["rows"]) == sorted(table["rows"], reverse=True)


def test_arrest_rates_order_and_min_rows() -> None:
    df = _frame()
    order = analysis.code_order(df["district"])
    assert order == ["1", "2", "10"]  # numeric, not lexicographic
    table = analysis.arrest_rates(df, "district", order=order)
    assert list(table["district"]) == [*order, F.MISSING]  # values outside the order go last
    big = int(table["rows"].max())
    assert len(analysis.arrest_rates(df, "district", min_rows=big)) == 1


def test_arrest_rate_by_distance_bins() -> None:
    df = pd.DataFrame({F.DIST_COL: [0.0, 1319.9, 1320.0, 5280.0, 1e6, np.nan],
                       R.TARGET: ["true", "false", "true", "true", "false", "false"]})
    table = analysis.arrest_rate_by_distance(df).set_index("distance")
    assert table.loc["0-0.25 mi", "rows"] == 2 and table.loc["0-0.25 mi", "arrests"] == 1
    assert table.loc["0.25-0.5 mi", "rows"] == 1  # edges are [low, high)
    assert table.loc["1-1.5 mi", "rows"] == 1
    assert table.loc[">= 3 mi", "rows"] == 1
    assert table.loc["no coordinates", "rows"] == 1
    assert list(table.index)[-1] == "no coordinates"


# --------------------------------------------------------------------------------------------
# data quality
# --------------------------------------------------------------------------------------------
def test_quarantine_summary_counts_rows_and_reasons(unit_lake: Any) -> None:
    bad = pd.DataFrame({"id": ["1", "2", "3"], REASON: ["date: missing", "date: missing",
                                                        "x_coordinate: out of range"]})
    unit_lake.put_bytes(layout.quarantine_key("2018-05"), to_csv_bytes(bad), "text/csv")
    unit_lake.put_bytes(layout.quarantine_key("2017-01"), to_csv_bytes(bad), "text/csv")
    per_month, per_reason = analysis.quarantine_summary(unit_lake, "2018-06")
    assert list(per_month["month"]) == layout.month_range("2018-06", 12)  # 2017-01 is outside
    counts = per_month.set_index("month")["quarantined_rows"]
    assert counts["2018-05"] == 3 and counts.drop("2018-05").eq(0).all()
    assert dict(zip(per_reason["reason"], per_reason["rows"], strict=True)) == {
        "date: missing": 2, "x_coordinate: out of range": 1}


def test_quality_summary_measures_and_reports() -> None:
    df = _frame(300).assign(primary_type="THEFT", date="2018-06-01T00:00:00")
    reports = {"enrich": {"rows_out": 300, "missing_coordinates": 7, "missing_target": 2},
               "split": {"details": {"dropped_unlabelled": 2}}}
    table = analysis.quality_summary(df, reports, quarantined_rows=4,
                                     etl_metrics={"ingest_invalid_rows": 4.0}).set_index("check")
    no_xy = table.loc["records without usable coordinates"]
    assert no_xy["measured"] == df["x_coordinate"].isna().sum() and no_xy["reported"] == 7
    unlabelled = table.loc["records without arrest label"]
    assert unlabelled["measured"] == df[R.TARGET].isna().sum()
    assert table.loc["quarantined (invalid) records in the window", "reported"] == 4
    assert table.loc["records without district", "share_of_records"] == pytest.approx(
        df["district"].isna().mean())


def test_stage_table_flattens_reports() -> None:
    reports = {
        "enrich": {"rows_in": 10, "rows_out": 10, "class_balance": {"arrest_rate": 0.2},
                   "seconds": 1.5},
        "split": {"rows_in": {"all": 10}, "rows_out": {"train": 8, "test": 2},
                  "class_balance": {"train": {"arrest_rate": 0.25},
                                    "test": {"arrest_rate": 0.0}}},
    }
    table = analysis.stage_table(reports).set_index("stage")
    assert table.loc["enrich", "arrest_rate"] == 0.2
    assert table.loc["split", "rows_out_train"] == 8 and table.loc["split", "rows_in_all"] == 10
    assert table.loc["split", "arrest_rate_test"] == 0.0
    assert math.isnan(table.loc["split", "seconds"])


def test_etl_quality_metrics_from_the_latest_run(unit_settings: Any, tmp_path: Path) -> None:
    settings = unit_settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    assert analysis.etl_quality_metrics("2018-06", settings) == {}
    reports = {"enrich": {"rows_out": 5, "missing_coordinates": 1, "seconds": 1.0}}
    etl.log_quality_run("2018-06", reports, settings, ingest_report={"invalid_rows": 3})
    etl.log_quality_run("2018-06", reports, settings, ingest_report={"invalid_rows": 2})
    metrics = analysis.etl_quality_metrics("2018-06", settings)
    assert metrics["ingest_invalid_rows"] == 2.0  # the run tagged latest
    assert metrics["enrich_missing_coordinates"] == 1.0
    assert analysis.etl_quality_metrics("2018-05", settings) == {}


# --------------------------------------------------------------------------------------------
# model analysis
# --------------------------------------------------------------------------------------------
def test_errors_by_group_counts_errors_per_group() -> None:
    n = 3000
    y = (RNG.random(n) < 0.3).astype(int)
    p = np.clip(0.3 + 0.4 * (y - 0.3) + RNG.normal(0, 0.2, n), 0, 1)
    groups = RNG.choice(["A", "B", "C"], size=n, p=[0.6, 0.35, 0.05])
    table = analysis.errors_by_group(y, p, groups, threshold=0.5, min_rows=200)
    assert set(table["group"]) == {"A", "B"}  # C is below min_rows
    for row in table.itertuples():
        mask = groups == row.group
        pred = p[mask] >= 0.5
        assert row.false_positives == int((pred & (y[mask] == 0)).sum())
        assert row.false_negatives == int((~pred & (y[mask] == 1)).sum())
        assert row.error_rate == pytest.approx(1 - (pred == y[mask]).mean())
        assert row.calibration_gap == pytest.approx(p[mask].mean() - y[mask].mean())
        assert row.roc_auc == pytest.approx(ev.binary_metrics(y[mask], p[mask])["roc_auc"])


def test_compare_models_uses_each_models_threshold() -> None:
    y = (RNG.random(500) < 0.2).astype(int)
    good = np.clip(0.2 + 0.5 * (y - 0.2) + RNG.normal(0, 0.1, 500), 0, 1)
    bad = RNG.random(500)
    table = analysis.compare_models(y, {"good": good, "bad": bad}, {"good": 0.3, "bad": 0.6})
    assert list(table.index) == ["good", "bad"]
    assert table.loc["good", "roc_auc"] > table.loc["bad", "roc_auc"]
    assert table.loc["bad", "f1"] == pytest.approx(ev.binary_metrics(y, bad, 0.6)["f1"])
    same = analysis.compare_models(y, {"good": good}, 0.3)
    assert same.loc["good", "threshold"] == 0.3


class _Model:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def test_load_registered_and_previous_champion(unit_settings: Any, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/mlflow.db"
    settings = unit_settings.model_copy(update={"mlflow_tracking_uri": db,
                                                "model_name": f"m_{uuid.uuid4().hex[:8]}"})
    client = registry.client_for(settings)
    models: dict[str, Any] = {}
    load = lambda name, version: models[str(version)]  # noqa: E731
    assert analysis.load_registered(settings=settings, client=client, load=load) is None

    experiment = client.create_experiment("analysis")
    for quality in (0.6, 0.9):  # the second one is better: it replaces the first
        run = client.create_run(experiment)
        card = registry.ModelCard(name=settings.model_name, threshold=quality / 2)
        version = registry.register(client, settings.model_name,
                                    f"runs:/{run.info.run_id}/model", run.info.run_id, card)
        models[str(version.version)] = _Model(quality)
        registry.gate(client, settings.model_name, version.version, lambda m: float(m.p),
                      champion_alias=settings.champion_alias, metric="roc_auc", margin=0.0,
                      load=load)

    champion = analysis.load_registered(settings=settings, client=client, load=load)
    assert champion is not None and champion.version == "2"
    assert champion.uri == f"models:/{settings.model_name}@champion"
    assert champion.threshold == pytest.approx(0.45)
    assert champion.model is models["2"]
    raw = pd.DataFrame({c: ["x"] * 3 for c in R.MODEL_FIELDS})
    assert champion.predict(raw).tolist() == [0.9] * 3
    previous = analysis.previous_champion(champion, settings, client=client, load=load)
    assert previous is not None and previous.version == "1" and previous.model is models["1"]
    assert previous.uri == f"models:/{settings.model_name}/1"
    assert analysis.previous_champion(previous, settings, client=client, load=load) is None


def test_month_split_and_baseline_on_a_small_lake(unit_lake: Any, unit_settings: Any,
                                                  shared_data: Path) -> None:
    from chicago_crime.devtools.seed import seed_window_from_exports

    month = "2018-06"
    with pytest.raises(FileNotFoundError, match="run the ETL"):
        analysis.month_split(month, unit_lake, unit_settings)
    seed_window_from_exports(unit_lake, shared_data, month, max_rows=3000, seed=1)
    assert etl.run_stage("enrich", month, unit_lake, unit_settings)["status"] == etl.OK
    assert etl.run_stage("split", month, unit_lake, unit_settings)["status"] == etl.OK
    split = analysis.month_split(month, unit_lake, unit_settings)
    report = etl.load_reports(month, unit_lake, unit_settings)["split"]
    assert len(split.raw_test) == report["rows_out"]["test"]
    assert split.y_test.sum() == report["class_balance"]["test"]["arrests"]
    assert set(split.raw_train["id"]).isdisjoint(split.raw_test["id"])
    p = analysis.iucr_baseline(split)
    assert p.shape == (len(split.raw_test),) and ((p >= 0) & (p <= 1)).all()
    assert ev.gate_score("roc_auc", split.y_test, p) > 0.6  # the crime code is informative
    districts = analysis.group_labels(split.raw_test, "district")
    assert all(d == F.MISSING or not d.startswith("0") for d in districts)

    enriched = etl.read_enriched(unit_lake, month)
    rates = analysis.arrest_rates(enriched, "primary_type")
    assert rates["arrests"].sum() == report["class_balance"]["train"]["arrests"] \
        + report["class_balance"]["test"]["arrests"]
    stations = analysis.station_table(unit_lake, month)
    fig = analysis.plot_crime_map(enriched, stations, max_points=500)
    assert len(fig.axes[0].texts) == len(stations)  # one label per district station
    fig = analysis.plot_arrest_rates(rates, "primary_type", top=5, overall=0.2)
    assert len(fig.axes[0].patches) == 5
    fig = analysis.plot_group_errors(
        analysis.errors_by_group(split.y_test, p, districts, 0.5, min_rows=1), "x", top=4)
    assert len(fig.axes[1].patches) == 4
