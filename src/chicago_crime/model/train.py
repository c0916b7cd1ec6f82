"""Training: from one month's ETL outputs in the lake to a registered, gated model version.

:func:`run_training` is the one code path of the Airflow training DAG and the CLI; it calls
one function per phase:

1. **Load** (:func:`load_month`) the month's ETL outputs: the fitted objects of the stage
   table's served stages (:mod:`chicago_crime.stages`), the classifier's train/test sets (the
   training-data stage, restricted to the selected features) and the raw records of the same
   train/test split, only through the stages' manifests (every stage published, each built
   from the published output of the one before, every byte as its manifest says) and fitted
   objects only through skops with the package's trusted types.
2. **Search** (:mod:`chicago_crime.model.tune`): Optuna over model family, hyperparameters and
   in-fold balancing, one nested MLflow run per trial.
3. **Refit** the best candidate on the full train set inside
   ``CalibratedClassifierCV(cv=3)``: each fold's calibrator is fitted on real, unbalanced
   held-out rows, which undoes the skew SMOTE gives a balanced model's probabilities; the
   **threshold** is the best F1 on out-of-fold calibrated probabilities of the train set
   (each row scored by a classifier *and* a calibrator that never saw it).
4. **Assemble** the served model ``Pipeline([enrich, outliers, encode, scale, select, clf])``:
   the served stages' fitted objects are the very objects the ETL stored, so training and
   serving cannot skew. It takes raw records and returns calibrated probabilities.
5. **Evaluate** it on the month's raw test records (:mod:`chicago_crime.model.evaluate`);
   the assembled pipeline must reproduce the classifier on the stage data
   (:class:`PipelineMismatch` fails the training otherwise).
6. **Log** it (signature, input example, pinned requirements, skops with the package's trusted
   types, ``predict_proba`` pyfunc), **register** it with its model card
   (:class:`~chicago_crime.model.registry.ModelCard`, the one record of threshold, features
   and window) and let the gate decide about the champion alias: on records dated after both
   models' windows when the lake has them (:func:`newer_records`), else on the month's test
   split; an error there fails the training and keeps the champion.

The logged model ships no code (``code_paths`` is empty): loading it needs the
``chicago-crime`` package installed, as it is in the API, the Airflow images and the venv.
Shipping the package with every model would put a second, older copy of it on ``sys.path``
of the process that loads the model (MLflow prepends a model's code and drops the modules it
shadows), i.e. the API would run half on the model's copy.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

import chicago_crime
from chicago_crime import etl, layout, serialization, stages
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.layout import MANIFEST_FILE
from chicago_crime.manifest import StageNotPublished
from chicago_crime.model import artifact, registry, tune
from chicago_crime.model import evaluate as ev
from chicago_crime.model.registry import ModelCard

log = logging.getLogger(__name__)

#: Libraries the served model needs at load time (pinned from requirements.lock), besides the
#: ``chicago-crime`` package itself.
MODEL_REQUIREMENTS: tuple[str, ...] = (
    "scikit-learn", "imbalanced-learn", "pandas", "numpy", "scipy", "geopandas", "shapely",
    "pyproj", "skops", "mlflow",
)
#: Share of the train rows (stratified, seeded) the calibration map is fitted on; the
#: booster is fitted on the rest.
CALIBRATION_FRACTION = 0.15
#: Folds of the cross-fitted calibration that gives the threshold its validation data.
CALIBRATION_FOLDS = 3
#: Isotonic calibration needs enough rows per fold; below this many train rows use sigmoid.
ISOTONIC_MIN_ROWS = 15_000
EXAMPLE_RECORDS = 5
#: Raw test records (SODA JSON form) logged with the trainer's probabilities, so any process
#: that loads the model can check it reproduces them.
SERVING_CHECK_RECORDS = 200
SERVING_CHECK_ARTIFACT = artifact.SERVING_CHECK_ARTIFACT


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class MonthData:
    """One month's training inputs, all read from the lake."""

    month: str
    steps: list[tuple[str, Any]]
    features: list[str]
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray
    raw_train: pd.DataFrame
    raw_test: pd.DataFrame
    keys: dict[str, str] = field(default_factory=dict)
    #: Other stage outputs a model family reads (``outliers``: categories still as text),
    #: train and test, row-aligned with ``X_train``/``X_test``.
    inputs: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=dict)
    #: ``YYYY-MM`` of each train row (the temporal search objective's newest month).
    train_months: np.ndarray | None = None

    @property
    def window(self) -> tuple[str, str]:
        """First and last day of the records the model was trained on (``YYYY-MM-DD``)."""
        dates = pd.concat([self.raw_train["date"], self.raw_test["date"]]).dropna().astype(str)
        return dates.min()[:10], dates.max()[:10]


class TrainingDataMissing(FileNotFoundError):
    """The month's ETL outputs are not (all) published in the lake."""


class PipelineMismatch(RuntimeError):
    """The assembled served pipeline does not reproduce the classifier on the stage data."""


#: Largest difference allowed between the served pipeline on raw records and the classifier
#: on the ETL's stage data (float noise only).
CONSISTENCY_TOLERANCE = 1e-6
#: Fewest records dated after both windows for the gate to compare on them.
NEWER_MIN_RECORDS = 500


def _frame(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def load_month(month: str, lake: Lake, settings: Settings) -> MonthData:
    """Read the served stages' fitted objects, the training data and the raw split of
    ``month``, all through the stages' manifests (:func:`etl.published_chain`): a stage that
    is not published, whose objects differ from its manifest, or that was built from another
    output of its source, is refused."""
    try:
        chain = etl.published_chain(lake, month)
    except StageNotPublished as exc:
        raise TrainingDataMissing(f"{month}: {exc}") from exc
    # skops with the package's trusted types only: nothing from the lake is unpickled
    steps = [(s.name, serialization.loads(chain[s.name].read("fitted")))
             for s in stages.served()]
    keys = {s.name: chain[s.name].key("fitted") for s in stages.served()}
    features = [str(c) for c in steps[-1][1].get_feature_names_out()]
    data_stage = chain[stages.training_data().name]
    keys.update(train_data=data_stage.key("train"), test_data=data_stage.key("test"),
                split_test=chain[stages.SPLIT].key("test"), window=layout.window_key(month))
    keys.update({f"manifest_{name}": pub.prefix + MANIFEST_FILE for name, pub in chain.items()})
    train = _frame(data_stage.read("train"))
    test = _frame(data_stage.read("test"))
    split_test_ids = _frame(chain[stages.SPLIT].read("test"))[etl.ID_COL].astype(str)
    split_train_ids = _frame(chain[stages.SPLIT].read("train"))[etl.ID_COL].astype(str)
    native = chain[tune.NATIVE_INPUT_STAGE]
    keys.update(native_train_data=native.key("train"), native_test_data=native.key("test"))
    inputs = {tune.NATIVE_INPUT_STAGE: tuple(
        _frame(native.read(part)).drop(columns=[R.TARGET, etl.ID_COL], errors="ignore")
        for part in ("train", "test"))}
    raw = etl.split_raw_window(month, lake, settings)
    if raw is None:
        raise TrainingDataMissing(f"raw window or split of {month} missing")
    raw_train, raw_test = raw
    # the raw test records in the order of the test set (the split stage's order)
    raw_test = raw_test.set_index(raw_test[etl.ID_COL].astype(str)).loc[split_test_ids]
    raw_test = raw_test.reset_index(drop=True)
    y_test = test[R.TARGET].astype(bool).to_numpy().astype(int)
    if len(raw_test) != len(test) or not np.array_equal(R.labels(raw_test), y_test):
        raise ValueError(f"{month}: raw test records do not line up with the test set")
    dates = raw_train.set_index(raw_train[etl.ID_COL].astype(str))["date"].astype(str)
    train_months = dates.reindex(split_train_ids).str[:7].to_numpy()
    if any(len(frame) != len(rows) for frame, rows in zip(inputs[tune.NATIVE_INPUT_STAGE],
                                                           (train, test), strict=True)):
        raise ValueError(f"{month}: the {tune.NATIVE_INPUT_STAGE} stage's rows do not line up "
                         "with the training data")
    return MonthData(
        month=month, steps=steps, features=features,
        X_train=train[features], y_train=train[R.TARGET].astype(int).to_numpy(),
        X_test=test[features], y_test=y_test, raw_train=raw_train, raw_test=raw_test,
        keys=keys, inputs=inputs, train_months=train_months,
    )


def processed_months(lake: Lake) -> list[str]:
    """Months whose ``split`` stage is published in the lake, oldest first."""
    months = set()
    for key in lake.iter_keys(layout.PROCESSED_PREFIX):
        stamp, _, rest = key[len(layout.PROCESSED_PREFIX):].partition("/")
        if rest == f"{stages.SPLIT}/{MANIFEST_FILE}":
            months.add(stamp[:7])
    return sorted(months)


def newer_records(lake: Lake, after: str, settings: Settings,
                  min_records: int = NEWER_MIN_RECORDS) -> tuple[pd.DataFrame, str] | None:
    """Raw test records dated after ``after`` (``YYYY-MM-DD``): the held-out split of the
    newest processed month whose window goes past ``after``, restricted to the days after it,
    so neither the challenger nor the champion (both trained up to ``after`` at most) saw
    them. None when the lake has no such month or too few records (< ``min_records``, or one
    class only)."""
    later = [m for m in processed_months(lake) if layout.stamp(m) > after]
    if not later:
        return None
    month = later[-1]
    split = etl.split_raw_window(month, lake, settings)
    if split is None:
        return None
    test = split[1]
    test = test[test["date"].astype(str).str[:10] > after].reset_index(drop=True)
    labels = R.labels(test)
    test = test[~np.isnan(labels)].reset_index(drop=True)
    y = R.labels(test)
    if len(test) < min_records or len(set(y.tolist())) < 2:
        log.info("only %d records of %s dated after %s: the gate uses the challenger's own "
                 "test split", len(test), month, after)
        return None
    return test, f"{len(test)} records of {month}'s test split dated after {after}"


def newer_evaluation(lake: Lake, settings: Settings) -> Any:
    """``newer(after)`` for :func:`registry.gate`: both models scored on records dated after
    both windows, when the lake has enough of them."""
    metric = settings.primary_metric

    def newer(after: str) -> registry.Evaluation | None:
        found = newer_records(lake, after, settings)
        if found is None:
            return None
        records, description = found
        inputs, y = R.model_frame(records), R.labels(records).astype(int)

        def score(model: Any) -> float:
            return ev.gate_score(metric, y, model.predict_proba(inputs)[:, 1])

        return registry.Evaluation(score, description)

    return newer


def newest_month_evaluation(data: MonthData, evaluation: Evaluation,
                            metric: str) -> registry.Evaluation:
    """The gate's records when the lake has none newer than both windows: the challenger's
    test split restricted to its window's newest month (records neither model trained on:
    the split is seeded, and an older champion's window ends before that month); the whole
    test split when that month has too few records (< ``NEWER_MIN_RECORDS``, or one class)."""
    months = data.raw_test["date"].astype(str).str[:7].to_numpy(dtype=object)
    newest = max(months.tolist()) if len(months) else ""
    mask = months == newest
    y = data.y_test
    if mask.sum() >= NEWER_MIN_RECORDS and len(set(y[mask].tolist())) == 2:
        inputs, y = evaluation.inputs[mask].reset_index(drop=True), y[mask]
        description = (f"{int(mask.sum())} records of {data.month}'s test split dated in "
                       f"{newest}, the window's newest month")
    else:
        inputs, description = evaluation.inputs, registry.IN_WINDOW

    def score(candidate: Any) -> float:
        return ev.gate_score(metric, y, candidate.predict_proba(inputs)[:, 1])

    return registry.Evaluation(score, description)


# --------------------------------------------------------------------------------------------
# final model
# --------------------------------------------------------------------------------------------
def calibration_method(rows: int) -> str:
    return "isotonic" if rows >= ISOTONIC_MIN_ROWS else "sigmoid"


def fit_calibrated(params: dict[str, Any], X: pd.DataFrame, y: np.ndarray, seed: int,
                   categorical: tuple[str, ...] | list[str] = (),
                   ) -> tuple[CalibratedClassifierCV, np.ndarray, np.ndarray]:
    """One booster and its calibration; plus the threshold's validation data.

    The candidate is fitted once, on a stratified ``1 - CALIBRATION_FRACTION`` of the rows;
    ``CalibratedClassifierCV(FrozenEstimator(candidate))`` (scikit-learn's way to calibrate
    a fitted model) maps its scores on the other rows to probabilities. Serving runs one
    booster per request (the former ``ensemble=True`` ran three) and training fits one
    instead of four. Returns the calibrated model and, for the calibration rows, their
    labels and probabilities from a calibration map cross-fitted on the *other* calibration
    rows: probabilities no part of the model fitted on, to place the threshold.
    """
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import train_test_split

    fit_rows, cal_rows = train_test_split(np.arange(len(X)), test_size=CALIBRATION_FRACTION,
                                          stratify=y, random_state=seed)
    candidate = tune.build_candidate(params, seed, categorical)
    candidate.fit(X.iloc[fit_rows], y[fit_rows])
    method = calibration_method(len(X))
    X_cal, y_cal = X.iloc[cal_rows], y[cal_rows]
    calibrated = CalibratedClassifierCV(FrozenEstimator(candidate), method=method)
    calibrated.fit(X_cal, y_cal)
    scores = _scores(candidate, X_cal)
    validation = np.empty(len(cal_rows), dtype=float)
    splitter = StratifiedKFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=seed)
    for other, held_out in splitter.split(scores, y_cal):
        if method == "isotonic":
            cal = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            cal.fit(scores[other], y_cal[other])
            validation[held_out] = cal.predict(scores[held_out])
        else:
            cal = LogisticRegression(C=1e6).fit(scores[other].reshape(-1, 1), y_cal[other])
            validation[held_out] = cal.predict_proba(scores[held_out].reshape(-1, 1))[:, 1]
    return calibrated, y_cal, validation


def _scores(estimator: Any, X: pd.DataFrame) -> np.ndarray:
    """``decision_function``, else the positive class's ``predict_proba`` (what
    ``CalibratedClassifierCV`` calibrates)."""
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(X), dtype=float)
    return np.asarray(estimator.predict_proba(X)[:, 1], dtype=float)


@dataclass
class FamilyInput:
    """A configuration's served steps up to its input stage, its training-time steps (fitted
    on the train set) and its classifier's train/test features."""

    steps: list[tuple[str, Any]]
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    categorical: list[str]
    stage: str


def family_input(data: MonthData, params: dict[str, Any]) -> FamilyInput:
    """What the family of ``params`` is fitted on: the encoded families read the served chain's
    output (the training data), the native ones the ``outliers`` stage's output plus category
    codes fitted here (label-free: train frequencies)."""
    stage = tune.input_stage(params["model"])
    names = [name for name, _ in data.steps]
    steps = list(data.steps[: names.index(stage) + 1])
    if stage == names[-1]:
        X_train, X_test = data.X_train, data.X_test
    else:
        X_train, X_test = data.inputs[stage]
    categorical: list[str] = []
    for name, step in tune.family_steps(params):
        X_train = step.fit_transform(X_train, data.y_train)
        X_test = step.transform(X_test)
        steps.append((name, step))
        categorical = list(getattr(step, "categorical_", categorical))
    return FamilyInput(steps, X_train, X_test, categorical, stage)


def assemble(steps: list[tuple[str, Any]], classifier: Any) -> Pipeline:
    """The served model: the ETL's fitted steps (named like their stages) followed by the
    calibrated classifier."""
    return Pipeline([*steps, ("clf", classifier)])


# --------------------------------------------------------------------------------------------
# temporal evaluation: "how will it do on next month's crimes"
# --------------------------------------------------------------------------------------------
#: Fewest labelled records of the window's newest month for the temporal evaluation.
TEMPORAL_MIN_RECORDS = 500
TEMPORAL_ARTIFACT = "evaluation/temporal.json"


@dataclass
class TemporalEvaluation:
    """The chosen configuration refitted on the window minus its newest month, scored on that
    month beside both baselines fitted on the same earlier records."""

    month: str
    fit_rows: int
    rows: int
    metrics: dict[str, dict[str, float]]
    seconds: float

    def flat(self) -> dict[str, float]:
        """``temporal_<metric>`` (the model), ``temporal_baseline_<name>_<metric>``."""
        out: dict[str, float] = {}
        for name, values in self.metrics.items():
            prefix = "temporal_" if name == "model" else f"temporal_baseline_{name}_"
            out.update({f"{prefix}{k}": v for k, v in values.items()})
        return _finite(out)


def temporal_split(data: MonthData) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """The window's labelled records before its newest month, and that month's (train and
    test split alike: the temporal refit never sees them). None when the newest month has too
    few records or one class only."""
    raw = pd.concat([data.raw_train, data.raw_test], ignore_index=True)
    raw = raw[~np.isnan(R.labels(raw))].reset_index(drop=True)
    months = raw["date"].astype(str).str[:7]
    newest = months.max()
    last, earlier = raw[months == newest], raw[months < newest]
    if len(last) < TEMPORAL_MIN_RECORDS or len(set(R.labels(last).tolist())) < 2 \
            or len(set(R.labels(earlier).tolist())) < 2:
        return None
    return earlier.reset_index(drop=True), last.reset_index(drop=True), newest


def refit_pipeline(data: MonthData, params: dict[str, Any], raw: pd.DataFrame,
                   seed: int) -> Pipeline:
    """The served pipeline's shape for ``params``, every label-dependent part refitted on
    ``raw`` only: the ETL's stages up to the family's input stage are clones of the lake's
    fitted objects (same settings; the balancing sampler in between as the ETL runs it), then
    the family's training-time steps and the calibrated classifier. The enricher is reused as
    it is: it holds the station table, nothing learnt from records."""
    from sklearn.base import clone

    enrich_name, enricher = data.steps[0]
    fitted = dict(data.steps)
    y = R.labels(raw).astype(int)
    X = X_fit = enricher.transform(R.model_frame(raw))
    y_fit = y.astype(bool)
    resampled = False
    steps: list[tuple[str, Any]] = [(enrich_name, enricher)]
    stage = tune.input_stage(params["model"])
    names = list(stages.NAMES)
    for row in stages.STAGES[names.index(enrich_name) + 1: names.index(stage) + 1]:
        if row.estimator is None:
            continue
        if not row.served:  # a sampler: the later stages fit on its output, as in the ETL
            X_fit, y_fit = row.make(seed).fit_resample(X_fit, y_fit)
            resampled = True
            continue
        step = clone(fitted[row.name])
        if resampled:
            X_fit = step.fit(X_fit, y_fit).transform(X_fit)
            X = step.transform(X)
        else:
            X = X_fit = step.fit_transform(X_fit, y_fit)
        steps.append((row.name, step))
    categorical: list[str] = []
    for name, step in tune.family_steps(params):
        X = step.fit_transform(X, y)
        categorical = list(getattr(step, "categorical_", categorical))
        steps.append((name, step))
    calibrated, _, _ = fit_calibrated(params, X, y, seed, categorical)
    return assemble(steps, calibrated)


def temporal_evaluation(data: MonthData, params: dict[str, Any],
                        seed: int) -> TemporalEvaluation | None:
    """Refit ``params`` on the window minus its newest month and score that month; the IUCR
    lookup and the plain native booster are fitted on the same earlier records and scored on
    the same rows. None when the window's newest month is too small (see
    :func:`temporal_split`)."""
    split = temporal_split(data)
    if split is None:
        return None
    started = time.perf_counter()
    earlier, last, newest = split
    y_earlier, y_last = R.labels(earlier).astype(int), R.labels(last).astype(int)
    model = refit_pipeline(data, params, earlier, seed)
    probabilities = {
        "model": model.predict_proba(R.model_frame(last))[:, 1],
        "iucr": ev.IucrRateBaseline().fit(earlier, y_earlier).predict_proba(last)[:, 1],
        "native_hgb": ev.NativeBoostingBaseline(data.steps[0][1], seed).fit(
            earlier, y_earlier).predict_proba(last)[:, 1],
    }
    metrics = {name: ev.binary_metrics(y_last, p) for name, p in probabilities.items()}
    return TemporalEvaluation(month=newest, fit_rows=len(earlier), rows=len(last),
                              metrics=metrics, seconds=time.perf_counter() - started)


def _log_temporal(temporal: TemporalEvaluation | None) -> None:
    import mlflow

    if temporal is None:
        mlflow.set_tag("temporal_evaluation", "skipped: too few records in the newest month")
        return
    model = temporal.metrics["model"]
    best_baseline = max(v["roc_auc"] for k, v in temporal.metrics.items() if k != "model")
    mlflow.log_metrics({**temporal.flat(),
                        "temporal_roc_auc_margin": model["roc_auc"] - best_baseline,
                        "temporal_seconds": temporal.seconds})
    mlflow.set_tag("temporal_evaluation",
                   f"refit on the window before {temporal.month} ({temporal.fit_rows} records), "
                   f"scored on {temporal.rows} records of {temporal.month}")
    mlflow.log_dict({"month": temporal.month, "fit_rows": temporal.fit_rows,
                     "rows": temporal.rows, "metrics": temporal.metrics,
                     "roc_auc_margin_over_best_baseline": model["roc_auc"] - best_baseline},
                    TEMPORAL_ARTIFACT)


# --------------------------------------------------------------------------------------------
# model packaging
# --------------------------------------------------------------------------------------------
def _lock_file() -> Path | None:
    for folder in Path(chicago_crime.__file__).resolve().parents:
        candidate = folder / "requirements.lock"
        if candidate.is_file():
            return candidate
    return None


def pip_requirements(names: tuple[str, ...] = MODEL_REQUIREMENTS) -> list[str]:
    """``name==version`` for the model's libraries: from requirements.lock, else installed."""
    pinned: dict[str, str] = {}
    lock = _lock_file()
    if lock is not None:
        for line in lock.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
            if match:
                pinned[match.group(1).lower().replace("_", "-")] = match.group(2)
    out = []
    for name in names:
        version = pinned.get(name) or metadata.version(name)
        out.append(f"{name}=={version}")
    return out


def example_records(raw: pd.DataFrame, n: int = EXAMPLE_RECORDS) -> list[dict[str, Any]]:
    """A few records exactly as the SODA API returns them (strings, JSON booleans, missing
    fields omitted), including one without coordinates when there is one."""
    from chicago_crime.portal import to_soda_json

    picked = raw.head(n - 1)
    no_xy = raw[raw["x_coordinate"].isna()] if "x_coordinate" in raw.columns else raw.iloc[:0]
    picked = pd.concat([picked, no_xy.head(1) if len(no_xy) else raw.iloc[n - 1:n]])
    frame = picked.drop(columns=[c for c in ("location",) if c in picked.columns])
    return json.loads(to_soda_json(frame.reset_index(drop=True)))


def optional_inputs(signature: Any, required: tuple[str, ...] = R.MODEL_REQUIRED_FIELDS) -> Any:
    """Mark every input column optional except ``required``: the enricher handles any missing
    field (the portal omits empty fields), so pyfunc schema checks must not reject them."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    columns = [ColSpec(type=c.type, name=c.name, required=c.name in required)
               for c in signature.inputs.inputs]
    return ModelSignature(inputs=Schema(columns), outputs=signature.outputs,
                          params=signature.params)


# --------------------------------------------------------------------------------------------
# the training run: one function per phase
# --------------------------------------------------------------------------------------------
def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


@dataclass
class FinalModel:
    """The refitted, calibrated classifier and the threshold chosen on its out-of-fold
    probabilities."""

    classifier: CalibratedClassifierCV
    threshold: float


@dataclass
class Evaluation:
    """The served model on the month's raw test records."""

    inputs: pd.DataFrame
    probabilities: np.ndarray
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]


def search_data(data: MonthData, max_rows: int | None, seed: int) -> tune.SearchData:
    """The train rows as each family reads them, with their months (temporal objective)."""
    inputs = {tune.input_stage("hgb"): data.X_train,
              tune.NATIVE_INPUT_STAGE: data.inputs[tune.NATIVE_INPUT_STAGE][0]}
    return tune.prepare_search_data(inputs, data.y_train, data.train_months,
                                    max_rows=max_rows, seed=seed)


def run_training(month: str, settings: Settings | None = None, lake: Lake | None = None, *,
                 trials: int | None = None, timeout: float | None = None,
                 search_max_rows: int | None = tune.SEARCH_MAX_ROWS,
                 importance_rows: int = 10_000,
                 search: tune.SearchResult | None = None,
                 run_id: str | None = None) -> dict[str, Any]:
    """Search, fit, evaluate, log, register and gate a model for ``month``.

    ``search``: the result of a search already run (the DAG's mapped trials); else it runs
    here. ``run_id``: continue that MLflow run (the parent the mapped trials nested under)
    instead of starting one. Returns small values: run id, registered version, whether it
    became champion, the gate's scores, the test and temporal metrics.
    """
    import mlflow

    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    started = time.perf_counter()
    data = load_month(month, lake, settings)
    n_trials = trials if trials is not None else settings.search_trials
    budget = timeout if timeout is not None else settings.search_timeout_seconds
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.search_experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"train-{month}") as run:
        _log_setup(data, lake, settings, n_trials=n_trials, budget=budget,
                   search_max_rows=search_max_rows)
        if search is None:
            search = tune.run_search(search_data(data, search_max_rows, settings.random_seed),
                                     n_trials=n_trials, timeout=budget,
                                     folds=settings.cv_folds, seed=settings.random_seed)
        _log_search(search)
        family = family_input(data, search.best_params)
        final = _fit_final(family, data.y_train, search.best_params, settings.random_seed)
        model = assemble(family.steps, final.classifier)
        evaluation = _evaluate(model, final, family, data, settings.random_seed,
                               importance_rows)
        temporal = temporal_evaluation(data, search.best_params, settings.random_seed)
        _log_temporal(temporal)
        window_start, window_end = data.window
        card = ModelCard(
            name=settings.model_name, run_id=run.info.run_id, threshold=final.threshold,
            features=tuple(str(c) for c in family.X_train.columns), month=month,
            window_start=window_start, window_end=window_end,
            metrics=_finite({**evaluation.metrics,
                             **({} if temporal is None else temporal.flat())}),
            calibration=final.classifier.method, model_family=search.best_params["model"],
            balanced=bool(search.best_params.get("balance")))
        card, decision = _register(model, card, data, evaluation, settings, lake)
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
    return {
        "month": month, "run_id": card.run_id, "model_name": card.name,
        "version": card.version, "promoted": decision.promoted, "reason": decision.reason,
        "champion_version": decision.champion_version,
        "challenger_score": decision.challenger_score,
        "champion_score": decision.champion_score, "gate_evaluation": decision.evaluated_on,
        "threshold": final.threshold,
        "best_params": search.best_params, "trials": search.n_trials,
        "search_seconds": search.seconds, "input_stage": family.stage,
        "metrics": {k: round(v, 6) for k, v in _finite(evaluation.metrics).items()},
        "baseline_metrics": {k: round(v, 6)
                             for k, v in _finite(evaluation.baseline_metrics).items()},
        "temporal": None if temporal is None else {
            "month": temporal.month,
            **{name: {k: round(v, 6) for k, v in _finite(m).items()}
               for name, m in temporal.metrics.items()}},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _log_setup(data: MonthData, lake: Lake, settings: Settings, *, n_trials: int,
               budget: float, search_max_rows: int | None) -> None:
    """The run's configuration (params), lineage (lake URIs as tags, dataset inputs)."""
    import mlflow

    mlflow.set_tags({"kind": "training", "month": data.month,
                     **{f"lake_{k}": lake.uri(v) for k, v in data.keys.items()}})
    mlflow.log_params({
        "month": data.month, "n_features": len(data.features), "train_rows": len(data.X_train),
        "test_rows": len(data.X_test), "seed": settings.random_seed,
        "cv_folds": settings.cv_folds, "search_trials": n_trials,
        "search_timeout_seconds": budget, "search_max_rows": search_max_rows,
        "primary_metric": settings.primary_metric,
        "promotion_margin": settings.promotion_margin,
    })
    y_train, y_test = data.y_train.astype(bool), data.y_test.astype(bool)
    for frame, key, name, context in (
            (data.X_train.assign(**{R.TARGET: y_train}), "train_data", "train", "training"),
            (data.X_test.assign(**{R.TARGET: y_test}), "test_data", "test", "testing"),
            (R.model_frame(data.raw_test).assign(**{R.TARGET: y_test}), "split_test",
             "raw-test", "evaluation")):
        mlflow.log_input(mlflow.data.from_pandas(
            frame, source=lake.uri(data.keys[key]), targets=R.TARGET,
            name=f"{name}-{data.month}"), context=context)


def _log_search(search: tune.SearchResult) -> None:
    import mlflow

    mlflow.log_params({f"best_{k}": v for k, v in search.best_params.items()})
    mlflow.log_params({"search_objective": search.objective,
                       "input_stage": tune.input_stage(search.best_params["model"]),
                       **{f"input_stage_{f}": tune.input_stage(f) for f in tune.FAMILIES}})
    mlflow.log_metrics(_finite({"search_trials_completed": search.n_trials,
                                "search_seconds": search.seconds,
                                **{f"cv_best_{k}": v for k, v in search.best_cv.items()}}))
    mlflow.log_table(pd.DataFrame(search.trials), "search/trials.json")


def _fit_final(family: FamilyInput, y: np.ndarray, params: dict[str, Any],
               seed: int) -> FinalModel:
    """Refit the best candidate with calibration; choose the threshold out of fold."""
    import mlflow

    started = time.perf_counter()
    calibrated, y_val, oof = fit_calibrated(params, family.X_train, y, seed,
                                            family.categorical)
    threshold, _ = ev.best_f1_threshold(y_val, oof)
    mlflow.log_params({"calibration": calibrated.method,
                       "calibration_rows": len(y_val),
                       "calibration_fraction": CALIBRATION_FRACTION})
    mlflow.log_metrics(_finite({
        "fit_seconds": time.perf_counter() - started,
        **{f"val_{k}": v for k, v in ev.binary_metrics(y_val, oof, threshold).items()},
    }))
    return FinalModel(calibrated, threshold)


def _evaluate(model: Pipeline, final: FinalModel, family: FamilyInput, data: MonthData,
              seed: int, importance_rows: int) -> Evaluation:
    """Test metrics of the served model on raw records, plots, per-type metrics, importance
    and the IUCR-rate baseline (logged under ``evaluation/``)."""
    import mlflow

    inputs = R.model_frame(data.raw_test)
    p_test = model.predict_proba(inputs)[:, 1]
    p_direct = final.classifier.predict_proba(family.X_test)[:, 1]
    consistency = float(np.max(np.abs(p_test - p_direct))) if len(p_test) else 0.0
    mlflow.log_metric("pipeline_consistency_max_abs_diff", consistency)
    if not consistency <= CONSISTENCY_TOLERANCE:  # NaN fails too
        raise PipelineMismatch(
            f"{data.month}: the assembled served pipeline differs from the classifier on the "
            f"ETL's stage data by {consistency:.3g} (> {CONSISTENCY_TOLERANCE:g}): the fitted "
            "stages and the stage data do not belong together; rerun the ETL for the month")
    baseline = ev.IucrRateBaseline().fit(data.raw_train, R.labels(data.raw_train))
    p_base = baseline.predict_proba(data.raw_test)[:, 1]
    importance = ev.permutation_importance_frame(final.classifier, family.X_test, data.y_test,
                                                 seed=seed, max_rows=importance_rows)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = ev.write_report(
            tmp, data.y_test, p_test, final.threshold,
            groups=[R.norm_text(v) for v in data.raw_test["primary_type"]],
            baseline=p_base, importance=importance,
            extra={"month": data.month, "calibration": final.classifier.method})
        mlflow.log_artifacts(tmp, "evaluation")
    base_metrics = ev.binary_metrics(data.y_test, p_base, final.threshold)
    mlflow.log_metrics(_finite({
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"baseline_test_{k}": v for k, v in base_metrics.items()},
    }))
    return Evaluation(inputs, p_test, metrics, base_metrics)


def _register(model: Pipeline, card: ModelCard, data: MonthData, evaluation: Evaluation,
              settings: Settings, lake: Lake) -> tuple[ModelCard, registry.GateDecision]:
    """Log the model, register it with its card and run the gate."""
    import mlflow
    from mlflow.models import infer_signature

    serialization.check_trusted(model)
    example = R.model_frame(example_records(data.raw_test))
    signature = optional_inputs(infer_signature(example, model.predict_proba(example)))
    with serialization.quiet_module_scan():  # MLflow's skops flavour saves it again
        info = mlflow.sklearn.log_model(
            model, name="model", signature=signature, input_example=example,
            pip_requirements=pip_requirements(),
            skops_trusted_types=serialization.trusted_types(), pyfunc_predict_fn="predict_proba",
        )
    artifact.log_serving_check(model, example_records(data.raw_test, SERVING_CHECK_RECORDS))
    client = registry.client_for(settings)
    version = registry.register(client, card.name, info.model_uri, str(card.run_id), card,
                                model_id=info.model_id)
    card = replace(card, version=str(version.version))
    metric = settings.primary_metric

    mlflow.set_tag("registered_version", card.version)
    try:
        decision = registry.gate(
            client, card.name, card.version, newest_month_evaluation(data, evaluation, metric),
            metric=metric,
            champion_alias=settings.champion_alias, margin=settings.promotion_margin,
            challenger_model=model, newer=newer_evaluation(lake, settings))
    except registry.GateError:
        mlflow.set_tag("gate_decision", registry.ERROR)
        raise
    mlflow.set_tags({"gate_decision": decision.outcome, "gate_reason": decision.reason[:5000],
                     "gate_evaluation": decision.evaluated_on})
    return card, decision
