"""The pandas and the per-record prediction paths give the same probabilities on real records."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from imblearn.pipeline import Pipeline as ImbPipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from chicago_crime.model.predict import (
    PandasPredictor,
    RecordPredictor,
    fast_path_parts,
    make_predictor,
    max_path_difference,
)
from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.record import model_frame
from chicago_crime.serve.schemas import CrimeRecord


# -- toy transformers implementing both transform (DataFrame) and transform_record (dict) ----
class WhenFeatures(TransformerMixin, BaseEstimator):
    """date -> hour, weekday; passes primary_type/domestic/x/y through."""

    def fit(self, X: pd.DataFrame, y: Any = None) -> WhenFeatures:
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array(["hour", "weekday", "primary_type", "domestic", "x", "y"], dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        date = pd.to_datetime(X["date"])
        return pd.DataFrame({
            "hour": date.dt.hour.astype(float).to_numpy(),
            "weekday": date.dt.weekday.astype(float).to_numpy(),
            "primary_type": X["primary_type"].astype(object).to_numpy(),
            "domestic": X["domestic"].map(
                lambda v: math.nan if v is None or v is pd.NA else float(v)
            ).astype(float).to_numpy(),
            "x": X["x_coordinate"].astype(float).to_numpy(),
            "y": X["y_coordinate"].astype(float).to_numpy(),
        }, index=X.index)

    def transform_record(self, record: dict[str, Any]) -> dict[str, Any]:
        date = record["date"]
        domestic = record.get("domestic")
        return {
            "hour": float(date.hour), "weekday": float(date.weekday()),
            "primary_type": record["primary_type"],
            "domestic": math.nan if domestic is None else float(domestic),
            "x": float(record["x_coordinate"]), "y": float(record["y_coordinate"]),
        }


class TypeRateEncoder(TransformerMixin, BaseEstimator):
    """primary_type -> its training arrest rate; NaNs (domestic, x, y) -> training means."""

    def fit(self, X: pd.DataFrame, y: Any) -> TypeRateEncoder:
        target = pd.Series(np.asarray(y, dtype=float), index=X.index)
        self.rates_ = target.groupby(X["primary_type"]).mean().to_dict()
        self.prior_ = float(target.mean())
        self.fill_ = {c: float(X[c].mean()) for c in ("domestic", "x", "y")}
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array(["hour", "weekday", "type_rate", "domestic", "x", "y"], dtype=object)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=X.index)
        out["hour"], out["weekday"] = X["hour"], X["weekday"]
        out["type_rate"] = X["primary_type"].map(self.rates_).astype(float).fillna(self.prior_)
        for col in ("domestic", "x", "y"):
            out[col] = X[col].fillna(self.fill_[col])
        return out

    def transform_record(self, record: dict[str, Any]) -> dict[str, Any]:
        out = {"hour": record["hour"], "weekday": record["weekday"],
               "type_rate": float(self.rates_.get(record["primary_type"], self.prior_))}
        for col in ("domestic", "x", "y"):
            out[col] = self.fill_[col] if math.isnan(record[col]) else record[col]
        return out


class RecordScaler(StandardScaler):
    """StandardScaler with the per-record path (DataFrame out, so names survive)."""

    def transform(self, X: Any, copy: Any = None) -> pd.DataFrame:
        return pd.DataFrame(super().transform(X), columns=self.feature_names_in_, index=X.index)

    def transform_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {name: (record[name] - mean) / scale for name, mean, scale
                in zip(self.feature_names_in_, self.mean_, self.scale_, strict=True)}


class WrongRecordScaler(RecordScaler):
    """Per-record path that disagrees with transform (must be caught by make_predictor)."""

    def transform_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return {name: record[name] * 2.0 for name in self.feature_names_in_}


# -- data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(shared_data) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The first 3,000 real records of 2018-02 (the unit sample has 2,000), typed as the server
    passes them, and their arrest labels."""
    raw = read_export(crimes_export_path(shared_data, "2018-02")).head(3000)
    raw = raw.astype(object).where(raw.notna(), None)
    records = [CrimeRecord.model_validate(r).model_input() for r in raw.to_dict("records")]
    labels = (raw["arrest"] == "true").to_numpy()
    return records, labels


def _fast_pipeline(records: list[dict[str, Any]], labels: np.ndarray, final: Any,
                   sampler: bool = False) -> Any:
    steps: list[tuple[str, Any]] = [("when", WhenFeatures()), ("rates", TypeRateEncoder())]
    if sampler:
        steps.append(("balance", RandomUnderSampler(random_state=0)))
    steps += [("scale", RecordScaler()), ("clf", final)]
    return ImbPipeline(steps).fit(model_frame(records), labels)


def test_fast_path_equals_pandas_on_real_records(real) -> None:
    records, labels = real
    model = _fast_pipeline(records, labels, LogisticRegression(max_iter=500))
    fast = RecordPredictor(model, pandas_above=None)
    got = fast.predict_proba_records(records)
    expected = model.predict_proba(model_frame(records))[:, 1]
    assert len(got) == len(records)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert fast.features == ["hour", "weekday", "type_rate", "domestic", "x", "y"]


@pytest.mark.parametrize(("method", "base"), [
    ("sigmoid", LogisticRegression(max_iter=500)),
    ("isotonic", LogisticRegression(max_iter=500)),
    ("sigmoid", HistGradientBoostingClassifier(max_iter=20, random_state=0)),
    ("temperature", LogisticRegression(max_iter=500)),
])
def test_fast_path_skips_samplers_and_averages_calibrated_classifiers(real, method, base) -> None:
    records, labels = real
    calibrated = CalibratedClassifierCV(base, cv=3, method=method)
    model = _fast_pipeline(records, labels, calibrated, sampler=True)
    assert len(model[-1].calibrated_classifiers_) == 3
    transformers, final = fast_path_parts(model)
    assert [type(t).__name__ for t in transformers] == [
        "WhenFeatures", "TypeRateEncoder", "RecordScaler"]
    assert final is model[-1]
    # the two paths sum in different orders: equal to float precision, not bit for bit
    assert max_path_difference(model, records) <= 1e-9
    # one record at a time too (the single /predict case)
    fast = RecordPredictor(model)
    singles = [fast.predict_proba_records([r])[0] for r in records[:50]]
    np.testing.assert_allclose(
        singles, model.predict_proba(model_frame(records[:50]))[:, 1], atol=1e-9
    )


def test_make_predictor_dispatch(real) -> None:
    records, labels = real
    fast_model = _fast_pipeline(records, labels, LogisticRegression(max_iter=500))
    assert make_predictor(fast_model, records[:20]).kind == "fast"
    assert make_predictor(fast_model, prefer_fast=False).kind == "pandas"

    onehot = Pipeline([
        ("enc", ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"),
                                    ["primary_type"])])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(model_frame(records), labels)
    assert fast_path_parts(onehot) is None
    assert isinstance(make_predictor(onehot, records[:5]), PandasPredictor)
    assert fast_path_parts(LogisticRegression()) is None


def test_disagreeing_fast_path_falls_back_to_pandas(real) -> None:
    records, labels = real
    model = ImbPipeline([("when", WhenFeatures()), ("rates", TypeRateEncoder()),
                         ("scale", WrongRecordScaler()),
                         ("clf", LogisticRegression(max_iter=500))])
    model.fit(model_frame(records), labels)
    assert max_path_difference(model, records[:50]) > 1e-6
    predictor = make_predictor(model, records[:50])
    assert predictor.kind == "pandas"
    np.testing.assert_allclose(
        predictor.predict_proba_records(records[:50]),
        model.predict_proba(model_frame(records[:50]))[:, 1],
    )


def test_nested_pipeline_and_large_batches_use_pandas_threshold(real) -> None:
    records, labels = real
    inner = Pipeline([("when", WhenFeatures()), ("rates", TypeRateEncoder())])
    model = Pipeline([("features", inner), ("scale", RecordScaler()),
                      ("clf", LogisticRegression(max_iter=500))]).fit(
        model_frame(records), labels)
    parts = fast_path_parts(model)
    assert parts is not None and len(parts[0]) == 3
    predictor = RecordPredictor(model, pandas_above=10)
    big = predictor.predict_proba_records(records[:100])  # over the threshold: pandas path
    small = [predictor.predict_proba_records([r])[0] for r in records[:100]]
    np.testing.assert_allclose(big, small, atol=1e-12)
    assert predictor.predict_proba_records([]) == []


def test_fast_path_matches_the_feature_pipeline_on_real_records(shared_data) -> None:
    """The platform's own feature steps + balancing + selection + calibration (issue #7)."""
    from chicago_crime import stages
    from chicago_crime.portal import snake_case

    stations = pd.read_csv(shared_data / "police_stations.csv", dtype=str)
    stations.columns = [snake_case(c) for c in stations.columns]
    raw = read_export(crimes_export_path(shared_data, "2018-04")).head(6000)
    raw = raw.astype(object).where(raw.notna(), None)
    records = [CrimeRecord.model_validate(r).model_input() for r in raw.to_dict("records")]
    labels = (raw["arrest"] == "true").to_numpy()
    half = len(records) // 2  # fit on one half, compare the paths on the other
    model = ImbPipeline([
        *stages.estimators(stations),
        ("clf", CalibratedClassifierCV(LogisticRegression(max_iter=1000), cv=3)),
    ]).fit(model_frame(records[:half]), labels[:half])
    held_out = records[half:]
    assert len(held_out) >= 500
    predictor = make_predictor(model, held_out[:10])
    assert predictor.kind == "fast"
    assert max_path_difference(model, held_out) <= 1e-9
    singles = [predictor.predict_proba_records([r])[0] for r in held_out[:100]]
    np.testing.assert_allclose(
        singles, model.predict_proba(model_frame(held_out[:100]))[:, 1], rtol=0, atol=1e-9
    )
