"""BoostedTrees scores exactly as scikit-learn's HistGradientBoostingClassifier does: the
champion's shape on real records, and the edge cases of its branch rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from chicago_crime import stages
from chicago_crime.model import tune
from chicago_crime.model.boosted_trees import BoostedTrees
from chicago_crime.model.predict import RecordPredictor, make_predictor, max_path_difference
from chicago_crime.portal import crimes_export_path, read_export, snake_case
from chicago_crime.record import model_frame
from chicago_crime.serve.schemas import CrimeRecord


def _synthetic(rows: int = 6000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(rows, 4)), columns=["a", "b", "c", "d"])
    X["cat_small"] = rng.integers(0, 5, rows).astype(float)
    X["cat_wide"] = rng.integers(0, 200, rows).astype(float)  # > 32: several bitset words
    X.loc[rng.random(rows) < 0.05, "cat_small"] = np.nan
    X.loc[rng.random(rows) < 0.05, "b"] = np.nan
    logit = X["a"] + (X["cat_small"] == 3) * 1.5 + (X["cat_wide"] % 7 == 0) - 0.5
    y = (logit + rng.normal(size=rows) > 0).to_numpy(int)
    return X, y


@pytest.mark.parametrize(("categorical", "offset"), [
    (["cat_small", "cat_wide"], 0.0),  # small integer categories: the lookup table
    (["cat_small", "cat_wide"], 5000.5),  # other values: a binary search per column
    (None, 0.0),  # numeric only: no preprocessor
])
def test_raw_scores_equal_sklearn_with_missing_and_unseen_values(categorical, offset) -> None:
    X, y = _synthetic()
    X["cat_wide"] += offset
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=31,
                                           categorical_features=categorical,
                                           random_state=0).fit(X, y)
    test, _ = _synthetic(rows=3000, seed=1)
    test["cat_wide"] += offset
    test.loc[:99, "cat_wide"] = 250.0 + offset  # a category never seen in training
    test.loc[100:199, "cat_small"] = -3.0  # a negative code: unknown too
    test.loc[200:299, "a"] = np.nan  # missing where training had none
    thresholds = [float(t) for t in model._predictors[0][0].nodes["num_threshold"][:5]]
    test.loc[300:304, "a"] = thresholds  # exactly on a split value (goes left)
    trees = BoostedTrees(model)
    assert (trees.lookup is not None) == (categorical is not None and offset == 0.0)
    expected = model.decision_function(test)
    np.testing.assert_allclose(trees.decision_function(test.to_numpy()),  # sklearn's loop
                               expected, rtol=0, atol=1e-12)
    walked = [trees.decision_function(rows) for rows in np.array_split(test.to_numpy(), 60)]
    np.testing.assert_allclose(np.concatenate(walked), expected, rtol=0, atol=1e-12)
    one = test.to_numpy()[:1]
    assert trees.decision_function(one).shape == (1,)
    assert trees.decision_function(one)[0] == pytest.approx(model.decision_function(
        test.iloc[:1])[0], abs=1e-12)


def test_compiled_trees_are_cached_per_model_and_check_their_input() -> None:
    X, y = _synthetic(rows=2000)
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, y)
    assert BoostedTrees.of(model) is BoostedTrees.of(model)
    with pytest.raises(ValueError, match="6 features"):
        BoostedTrees(model).decision_function(np.zeros((1, 3)))
    multi = HistGradientBoostingClassifier(max_iter=5).fit(X, np.arange(len(X)) % 3)
    with pytest.raises(ValueError, match="binary"):
        BoostedTrees(multi)


@pytest.fixture(scope="module")
def champion_shaped(shared_data) -> tuple[Pipeline, list[dict]]:
    """The served champion's shape fitted on real records: enrich -> outliers -> category
    codes (with interactions) -> a native-categorical booster behind a frozen calibration."""
    stations = pd.read_csv(shared_data / "police_stations.csv", dtype=str)
    stations.columns = [snake_case(c) for c in stations.columns]
    raw = pd.concat([read_export(crimes_export_path(shared_data, month))
                     for month in ("2018-02", "2018-03")], ignore_index=True)
    raw = raw.astype(object).where(raw.notna(), None)
    records = [CrimeRecord.model_validate(r).model_input() for r in raw.to_dict("records")]
    y = (raw["arrest"] == "true").to_numpy(int)
    prefix = []  # the fitted stages up to the native family's input
    for name, step in stages.estimators(stations):
        prefix.append((name, step))
        if name == tune.NATIVE_INPUT_STAGE:
            break
    params = {**tune.DEFAULT_TRIAL, "interactions": True, "max_iter": 80}
    features = Pipeline([*prefix, *tune.family_steps(params)])
    # fit and calibrate on February, score March (categories February never saw included)
    fit, cal, rest = slice(0, 1400), slice(1400, 2000), slice(2000, None)
    X = features.fit_transform(model_frame(records[fit]), y[fit])
    booster = tune.build_model(params, categorical=features[-1].categorical_).fit(X, y[fit])
    clf = CalibratedClassifierCV(FrozenEstimator(booster), method="isotonic")
    clf.fit(features.transform(model_frame(records[cal])), y[cal])
    return Pipeline([*features.steps, ("clf", clf)]), records[rest]


def test_the_champions_shape_takes_the_fast_path_with_sklearns_probabilities(
        champion_shaped) -> None:
    model, held_out = champion_shaped
    assert len(held_out) >= 1500
    predictor = make_predictor(model, held_out[:20])
    assert predictor.kind == "fast"
    assert max_path_difference(model, held_out) <= 1e-9
    singles = [predictor.predict_proba_records([r])[0] for r in held_out[:200]]
    np.testing.assert_allclose(singles, model.predict_proba(model_frame(held_out[:200]))[:, 1],
                               rtol=0, atol=1e-9)


def test_a_bare_booster_as_final_step_is_scored_by_the_compiled_trees(champion_shaped) -> None:
    model, held_out = champion_shaped
    booster = model[-1].calibrated_classifiers_[0].estimator.estimator
    bare = Pipeline([*model.steps[:-1], ("clf", booster)])
    fast = RecordPredictor(bare, pandas_above=None)
    np.testing.assert_allclose(fast.predict_proba_records(held_out[:500]),
                               bare.predict_proba(model_frame(held_out[:500]))[:, 1],
                               rtol=0, atol=1e-12)


def test_large_batches_use_sklearns_per_tree_loop_on_encoded_rows() -> None:
    from chicago_crime.model import boosted_trees

    X, y = _synthetic()
    model = HistGradientBoostingClassifier(max_iter=40, categorical_features=["cat_small",
                                                                              "cat_wide"],
                                           random_state=0).fit(X, y)
    test, _ = _synthetic(rows=boosted_trees.PER_TREE_ROWS * 4, seed=2)
    test.loc[:9, "cat_wide"] = 250.0
    trees = BoostedTrees(model)
    walked = np.concatenate([trees.decision_function(chunk) for chunk in
                             np.array_split(test.to_numpy(), 8)])  # below PER_TREE_ROWS
    per_tree = trees.decision_function(test.to_numpy())  # at or above it
    np.testing.assert_allclose(per_tree, model.decision_function(test), rtol=0, atol=1e-12)
    np.testing.assert_allclose(walked, per_tree, rtol=0, atol=1e-12)
