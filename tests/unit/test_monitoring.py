"""Drift statistics on synthetic data, the decision rules and the report (no services)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chicago_crime.monitoring import drift as D
from chicago_crime.monitoring import monitor as M
from chicago_crime.monitoring.report import render

KW = {"psi_threshold": 0.2, "alpha": 0.01}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_identical_numeric_samples_do_not_drift(rng):
    ref = pd.Series(rng.normal(0, 1, 20_000))
    cur = pd.Series(rng.normal(0, 1, 5_000))
    result = D.column_drift("x", ref, cur, **KW)
    assert result.kind == D.NUMERIC and result.test == "ks"
    assert result.psi < 0.02 and result.p_value > 0.01 and not result.drifted


def test_shifted_numeric_sample_drifts(rng):
    ref = pd.Series(rng.normal(0, 1, 20_000))
    cur = pd.Series(rng.normal(1.0, 1, 5_000))
    result = D.column_drift("x", ref, cur, **KW)
    assert result.psi > 0.5 and result.p_value < 1e-10 and result.drifted


def test_small_shift_on_a_large_sample_is_significant_but_not_drift(rng):
    """p alone flags anything on tens of thousands of rows; PSI decides the size."""
    ref = pd.Series(rng.normal(0, 1, 200_000))
    cur = pd.Series(rng.normal(0.05, 1, 200_000))
    result = D.column_drift("x", ref, cur, **KW)
    assert result.p_value < 0.01 and result.psi < 0.2 and not result.drifted


def test_changed_category_mix_drifts_and_same_mix_does_not(rng):
    types = ["THEFT", "BATTERY", "NARCOTICS", "ASSAULT"]
    ref = pd.Series(rng.choice(types, 20_000, p=[0.4, 0.3, 0.1, 0.2]))
    same = pd.Series(rng.choice(types, 5_000, p=[0.4, 0.3, 0.1, 0.2]))
    shifted = pd.Series(rng.choice(types, 5_000, p=[0.2, 0.15, 0.55, 0.1]))
    stable = D.column_drift("t", ref, same, **KW)
    assert stable.kind == D.CATEGORICAL and stable.test == "chi2" and not stable.drifted
    moved = D.column_drift("t", ref, shifted, **KW)
    assert moved.drifted and moved.psi > 0.3
    assert [b[0] for b in moved.bins][-2:] == [D.OTHER_BIN, D.MISSING_BIN]


def test_missing_values_have_their_own_bin(rng):
    ref = pd.Series(rng.normal(0, 1, 10_000))
    cur = pd.Series(np.where(rng.random(5_000) < 0.5, np.nan, rng.normal(0, 1, 5_000)))
    result = D.column_drift("x", ref, cur, **KW)
    assert result.bins[-1][0] == D.MISSING_BIN and result.bins[-1][2] == pytest.approx(0.5, 0.05)
    assert result.psi > 1  # half the column went missing: a real shift


def test_many_rare_categories_are_folded_into_other(rng):
    ref = pd.Series([f"B{i}" for i in rng.integers(0, 300, 20_000)])
    cur = pd.Series([f"B{i}" for i in rng.integers(0, 300, 5_000)])
    result = D.column_drift("beat", ref, cur, **KW)
    assert len(result.bins) == D.TOP_CATEGORIES + 2 and not result.drifted


def test_psi_is_zero_for_equal_shares_and_finite_for_empty_bins():
    assert D.psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert np.isfinite(D.psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))


def test_frame_drift_names_and_kinds(rng):
    ref = pd.DataFrame({"a": rng.normal(size=500), "b": rng.choice(["x", "y"], 500)})
    out = D.frame_drift(ref, ref.copy(), prefix="enriched/", **KW)
    assert [(d.feature, d.kind) for d in out] == [("enriched/a", D.NUMERIC),
                                                  ("enriched/b", D.CATEGORICAL)]
    assert not any(d.drifted for d in out)
    json.dumps([d.as_dict() for d in out])  # JSON-able (XCom, summary.json)


# --- decisions --------------------------------------------------------------------------
@pytest.fixture
def settings(unit_settings):
    return unit_settings


def _assessment(drift=(), auc_drop=None, ece_rise=None, champion=True):
    decay = None
    if auc_drop is not None or ece_rise is not None:
        decay = {"champion": {"roc_auc": 0.9, "ece": 0.01, "brier": 0.1},
                 "monthly": {"roc_auc": 0.9 - (auc_drop or 0), "ece": 0.01 + (ece_rise or 0),
                             "brier": 0.1},
                 "auc_drop": auc_drop, "ece_rise": ece_rise, "labelled_rows": 1000,
                 "excluded_trained_rows": 0, "unseen_rows": 1000, "logged": None, "note": None}
    return {"month": "2018-07", "champion": {"version": "3"} if champion else None,
            "drift": list(drift), "decay": decay,
            "thresholds": {"psi": 0.2, "p_value": 0.01, "auc_drop": 0.03, "ece_rise": 0.05}}


def _feature(name, psi, drifted, seasonal=False):
    return {"feature": name, "psi": psi, "drifted": drifted, "seasonal": seasonal,
            "kind": D.NUMERIC, "test": "ks", "statistic": 0.1, "p_value": 0.0, "bins": []}


def test_no_champion_means_retrain(settings):
    decision = M.decide(_assessment(champion=False), settings)
    assert decision["retrain"] and decision["action"] == M.RETRAIN
    assert decision["reason"] == M.NO_CHAMPION


def test_stable_month_means_no_action(settings):
    decision = M.decide(_assessment([_feature("enriched/hour", 0.01, False)], auc_drop=0.01,
                                    ece_rise=0.01), settings)
    assert not decision["retrain"] and decision["action"] == M.NO_ACTION
    assert decision["reason"].startswith("no action")


def test_drift_means_retrain_naming_the_features(settings):
    decision = M.decide(_assessment([_feature("enriched/x_coordinate", 0.9, True),
                                     _feature("enriched/hour", 0.01, False)]), settings)
    assert decision["retrain"]
    assert "data drift in 1 feature(s): enriched/x_coordinate (PSI 0.900)" in decision["reason"]


def test_calendar_features_never_count_as_drift(settings):
    assert M.is_seasonal("enriched/month") and M.is_seasonal("input/season_Summer")
    assert not M.is_seasonal("enriched/hour") and not M.is_seasonal("input/monthly_thing")
    decision = M.decide(_assessment([_feature("enriched/month", 3.0, True, seasonal=True)]),
                        settings)
    assert not decision["retrain"]


def test_decay_thresholds(settings):
    auc = M.decide(_assessment(auc_drop=0.05), settings)
    assert auc["retrain"] and "ROC AUC" in auc["reason"]
    ece = M.decide(_assessment(ece_rise=0.08), settings)
    assert ece["retrain"] and "ECE" in ece["reason"]
    both = M.decide(_assessment([_feature("input/iucr_te", 0.5, True)], auc_drop=0.05,
                                ece_rise=0.08), settings)
    assert len(both["reasons"]) == 3


def test_thresholds_come_from_the_settings(settings):
    strict = settings.model_copy(update={"monitor_auc_drop": 0.005})
    assert not M.decide(_assessment(auc_drop=0.01), settings)["retrain"]
    assert M.decide(_assessment(auc_drop=0.01), strict)["retrain"]


def test_metrics_summary_and_report(settings):
    assessment = _assessment([_feature("enriched/primary type?", 0.4, True)], auc_drop=0.05)
    assessment.update(current_rows=10, seconds=1.0, notes=["prediction drift: none"])
    decision = M.decide(assessment, settings)
    metrics = M.metrics(assessment, decision)
    assert metrics["drift_psi/enriched/primary type_"] == 0.4
    assert metrics["monthly_roc_auc"] == pytest.approx(0.85)
    assert metrics["retrain_requested"] == 1.0
    summary = M.summary(assessment, decision)
    assert summary["decision"]["action"] == M.RETRAIN
    assert summary["drifted_features"] == ["enriched/primary type?"]
    html = render(assessment, decision)
    assert "<h1>Monitoring of 2018-07</h1>" in html and "retrain" in html
    assert "<script" not in html and "http" not in html  # self-contained, offline


def test_an_unreadable_or_empty_prediction_log_is_not_an_error(settings, monkeypatch):
    import pandas as pd

    from chicago_crime.monitoring import prediction_log

    def down(*_args):
        raise OSError("connection refused")

    monkeypatch.setattr(prediction_log, "read_predictions", down)
    frame, note = M.logged_predictions(settings, "2018-06")
    assert frame is None and note == "prediction drift: prediction log unreadable (OSError)"
    monkeypatch.setattr(prediction_log, "read_predictions", lambda *_: pd.DataFrame())
    frame, note = M.logged_predictions(settings, "2018-06")
    assert frame is None and note == "prediction drift: no logged predictions"


def test_pushgateway_unset_or_down_is_not_fatal(settings):
    assessment = _assessment(auc_drop=0.0)
    decision = M.decide(assessment, settings)
    unset = settings.model_copy(update={"pushgateway_url": ""})
    assert M.push_gauges(assessment, decision, unset) is False
    down = settings.model_copy(update={"pushgateway_url": "http://127.0.0.1:9"})
    assert M.push_gauges(assessment, decision, down) is False


def test_repeated_inputs_count_once_for_prediction_drift():
    """A demo record posted 600 times under fresh ids is one input, not a population."""
    from chicago_crime.devtools import demo
    from chicago_crime.record import MODEL_FIELDS

    # as read_predictions returns them: missing numbers NaN, a missing flag None
    base = {name: demo.EXAMPLE_RECORD.get(name) for name in MODEL_FIELDS} | {
        "x_coordinate": float("nan"), "domestic": None}
    repeated = pd.DataFrame([{**base, "record_id": f"t-{i}", "probability": 0.9,
                              "logged_at": pd.Timestamp("2026-01-01", tz="UTC")
                              + pd.Timedelta(seconds=i)} for i in range(600)])
    distinct = M.distinct_records(repeated)
    assert len(distinct) == 1 and distinct["record_id"].iloc[0] == "t-599"  # the latest kept
    varied = repeated.assign(beat=[f"{i:04d}" for i in range(600)])
    assert len(M.distinct_records(varied)) == 600
    assert M.distinct_records(repeated.iloc[:0]).empty
