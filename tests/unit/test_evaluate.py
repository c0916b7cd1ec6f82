"""Evaluation metrics against independent computations, the IUCR baseline, the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from chicago_crime.model import evaluate as ev
from chicago_crime.portal import read_export


def _calibrated_sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(1, 3, n)
    return (rng.random(n) < p).astype(int), p


def test_ece_is_small_for_calibrated_and_large_for_shifted_probabilities() -> None:
    y, p = _calibrated_sample(200_000)
    assert ev.expected_calibration_error(y, p) < 0.01
    shifted = np.clip(p + 0.1, 0, 1)
    assert ev.expected_calibration_error(y, shifted) == pytest.approx(0.1, abs=0.01)


def test_ece_matches_a_direct_computation() -> None:
    y = np.array([0, 1, 1, 0, 1, 0, 0, 0])
    p = np.array([0.05, 0.95, 0.55, 0.45, 0.35, 0.15, 0.12, 1.0])
    # bins of width 0.1: [0.0,0.1): {0.05}; [0.1,0.2): {0.15,0.12}; [0.3,0.4): {0.35};
    # [0.4,0.5): {0.45}; [0.5,0.6): {0.55}; [0.9,1.0]: {0.95, 1.0}
    gaps = [1 * abs(0 - 0.05), 2 * abs(0 - 0.135), 1 * abs(1 - 0.35), 1 * abs(0 - 0.45),
            1 * abs(1 - 0.55), 2 * abs(0.5 - 0.975)]
    assert ev.expected_calibration_error(y, p) == pytest.approx(sum(gaps) / 8)


def test_best_f1_threshold_matches_brute_force() -> None:
    y, p = _calibrated_sample(3000, seed=1)
    threshold, best = ev.best_f1_threshold(y, p)
    brute = max(f1_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert best == pytest.approx(brute)
    assert f1_score(y, (p >= threshold).astype(int)) == pytest.approx(best)


def test_binary_metrics_agree_with_sklearn() -> None:
    y, p = _calibrated_sample(5000, seed=2)
    m = ev.binary_metrics(y, p, threshold=0.3)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, (p >= 0.3).astype(int)))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["rows"] == 5000


def test_gate_score_rejects_unknown_metrics() -> None:
    y, p = _calibrated_sample(100)
    with pytest.raises(ValueError, match="unsupported primary metric"):
        ev.gate_score("accuracy", y, p)


def test_metrics_by_group_per_primary_type() -> None:
    y, p = _calibrated_sample(3000, seed=3)
    groups = np.where(np.arange(3000) % 3 == 0, "THEFT", "BATTERY")
    frame = ev.metrics_by_group(y, p, groups, threshold=0.5)
    assert list(frame["group"]) == ["BATTERY", "THEFT"]  # largest first
    theft = groups == "THEFT"
    assert frame.set_index("group").loc["THEFT", "roc_auc"] == pytest.approx(
        roc_auc_score(y[theft], p[theft]))


def test_iucr_baseline_predicts_training_rates(shared_data: Path) -> None:
    raw = read_export(shared_data / "crimes" / "2018-06.csv.gz")
    y = (raw["arrest"] == "true").astype(int).to_numpy()
    baseline = ev.IucrRateBaseline().fit(raw, y)
    expected = pd.Series(y).groupby(raw["iucr"].to_numpy()).mean()
    p = baseline.predict_proba(raw)[:, 1]
    np.testing.assert_allclose(p, expected.loc[raw["iucr"]].to_numpy())
    # numbers without leading zeros are the same code; unseen codes get the overall rate
    probe = pd.DataFrame({"iucr": ["486", "0486", "9999"]})
    out = baseline.predict_proba(probe)[:, 1]
    assert out[0] == out[1] == pytest.approx(expected["0486"])
    assert out[2] == pytest.approx(y.mean())
    assert 0.8 < roc_auc_score(y, p) < 0.95


def test_write_report_writes_every_artifact(tmp_path: Path) -> None:
    y, p = _calibrated_sample(2000, seed=4)
    groups = np.where(np.arange(2000) % 2 == 0, "THEFT", "NARCOTICS")
    importance = pd.DataFrame({"feature": ["a"], "importance_mean": [0.1],
                               "importance_std": [0.0]})
    metrics = ev.write_report(tmp_path, y, p, 0.4, groups=groups, baseline=p * 0.9,
                              importance=importance)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    for name in ("roc_curve.png", "pr_curve.png", "calibration_curve.png",
                 "confusion_matrix.png", "metrics_by_primary_type.csv",
                 "metrics_by_primary_type.json", "permutation_importance.csv", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "roc_curve.png").read_bytes()[:4] == b"\x89PNG"


def _stations(shared_data: Path) -> pd.DataFrame:
    from chicago_crime.portal import snake_case

    stations = pd.read_csv(shared_data / "police_stations.csv", dtype=str)
    stations.columns = [snake_case(c) for c in stations.columns]
    return stations


def test_native_boosting_baseline_beats_chance_on_a_later_month(shared_data: Path) -> None:
    """The plain native-categorical booster: fitted on one month, scored on the next."""
    from chicago_crime import features as F
    from chicago_crime import record as R

    enricher = F.CrimeEnricher(_stations(shared_data)).fit()
    earlier = read_export(shared_data / "crimes" / "2018-05.csv.gz")
    later = read_export(shared_data / "crimes" / "2018-06.csv.gz")
    y_earlier, y_later = R.labels(earlier).astype(int), R.labels(later).astype(int)
    baseline = ev.NativeBoostingBaseline(enricher).fit(earlier, y_earlier)
    assert set(baseline.codes_.categorical_) == set(ev.NATIVE_BASELINE_CATEGORIES)
    p = baseline.predict_proba(later)[:, 1]
    assert p.shape == (len(later),) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y_later, p) > 0.75
