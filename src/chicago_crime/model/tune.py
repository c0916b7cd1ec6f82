"""Hyperparameter search: Optuna (seeded TPE) over model family, hyperparameters and balancing.

A candidate is ``imblearn.pipeline.Pipeline([("balance", SmoteUnderSampler)?, ("clf", model)])``
scored with ``StratifiedKFold(cv_folds)``: the sampler runs inside ``fit`` of each fold, so
resampling touches the fold's training part only and every score comes from real, unbalanced
held-out rows. Each trial is one nested MLflow run (params + CV metrics) under the caller's
active parent run.

The search space:

* ``model``: ``hgb`` (``HistGradientBoostingClassifier`` on the ETL's encoded features: learning
  rate, iterations, leaves, minimum leaf size, L2), ``logreg`` (``LogisticRegression``: ``C``) or
  ``hgb_native`` (``HistGradientBoostingClassifier`` with native categorical splits on the
  ``outliers`` stage's output, categories as :class:`~chicago_crime.features.CategoryCodes`:
  the same hyperparameters plus the categorical smoothing and interaction columns);
* ``balance``: SMOTE + under-sampling (``features.SmoteUnderSampler``) in the folds, or none
  (encoded families only: SMOTE between category codes is meaningless).

Which ETL stage output each family reads is :func:`input_stage` (logged by the trainer).

The objective is ROC AUC (ranking quality) on the **newest month** of the train rows, the
candidate fitted on the earlier months (:func:`temporal_scores`: "how will it do on next
month's crimes"); with too few rows in that month, the mean stratified-CV ROC AUC. The
temporal objective compares the native families only (:attr:`SearchData.families`: the
encoded inputs' target encoding has seen that month). Probability
quality comes from the calibration step the trainer adds afterwards. The first trials are
fixed, sensible defaults (one per family), so even a small budget compares the families.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline as ImbPipeline
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

from chicago_crime import features as F

log = logging.getLogger(__name__)

#: Train rows the search uses at most (a stratified, seeded subsample): keeps the default
#: budget under 5 minutes on 2 cores. The final model is refit on the full train set.
SEARCH_MAX_ROWS = 40_000
SCORING: dict[str, str] = {
    "roc_auc": "roc_auc", "pr_auc": "average_precision", "f1": "f1",
    "brier": "neg_brier_score", "log_loss": "neg_log_loss",
}
#: Scorers that sklearn negates (reported here with their natural sign).
_NEGATED = {"brier", "log_loss"}
#: Families whose input is the ETL's encoded, scaled, selected features (the served chain).
ENCODED_FAMILIES = ("hgb", "logreg")
#: Families with native categorical splits on the ``outliers`` stage's output.
NATIVE_FAMILIES = ("hgb_native",)
FAMILIES = ENCODED_FAMILIES + NATIVE_FAMILIES
#: The ETL stage whose output the native families read (categories still as text).
NATIVE_INPUT_STAGE = "outliers"
#: Interaction columns of the native family (``interactions=True``): category pairs.
NATIVE_INTERACTIONS: tuple[tuple[str, str], ...] = (
    ("iucr", "location_description"), ("iucr", "district"), ("description", "day_time"),
)
#: Fewest rows of the newest month for the temporal objective (else stratified CV).
TEMPORAL_MIN_ROWS = 1_000
DEFAULT_TRIALS: tuple[dict[str, Any], ...] = (
    {"model": "hgb_native", "balance": False, "learning_rate": 0.1, "max_iter": 300,
     "max_leaf_nodes": 31, "min_samples_leaf": 40, "l2_regularization": 1.0,
     "interactions": False},
    {"model": "hgb", "balance": False, "learning_rate": 0.1, "max_iter": 300,
     "max_leaf_nodes": 31, "min_samples_leaf": 40, "l2_regularization": 1.0},
)
DEFAULT_TRIAL: dict[str, Any] = DEFAULT_TRIALS[0]


def input_stage(family: str) -> str:
    """The ETL stage whose train/test outputs ``family`` is fitted on: ``outliers`` for the
    native families, the served chain's last stage (``select``) for the encoded ones."""
    from chicago_crime import stages

    if family in NATIVE_FAMILIES:
        return NATIVE_INPUT_STAGE
    if family in ENCODED_FAMILIES:
        return stages.served()[-1].name
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def family_steps(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """Training-time steps between the family's input stage and the classifier (unfitted):
    the category codes of a native family, nothing for the encoded ones."""
    if params["model"] in NATIVE_FAMILIES:
        pairs = NATIVE_INTERACTIONS if params.get("interactions") else ()
        return [("codes", F.CategoryCodes(interactions=pairs))]
    return []


def family_key(params: dict[str, Any]) -> str:
    """Which prepared dataset a configuration reads (its input and training-time steps)."""
    if params["model"] in NATIVE_FAMILIES:
        return "native_interactions" if params.get("interactions") else "native"
    return "encoded"


@dataclass
class SearchResult:
    """Outcome of :func:`run_search` (small values only)."""

    best_params: dict[str, Any]
    best_score: float
    best_trial: int
    n_trials: int
    rows: int
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    best_cv: dict[str, float] = field(default_factory=dict)
    objective: str = "temporal"


def suggest_params(trial: Any, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """Sample one configuration from the search space (Optuna ``Trial``)."""
    params: dict[str, Any] = {"model": trial.suggest_categorical("model", list(families))}
    native = params["model"] in NATIVE_FAMILIES
    params["balance"] = False if native else trial.suggest_categorical("balance", [False, True])
    if params["model"] in ("hgb", "hgb_native"):
        params.update(
            learning_rate=trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            max_iter=trial.suggest_int("max_iter", 100, 800, step=50),
            max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 15, 127, log=True),
            min_samples_leaf=trial.suggest_int("min_samples_leaf", 10, 200, log=True),
            l2_regularization=trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
        )
        if native:
            params["interactions"] = trial.suggest_categorical("interactions", [False, True])
    else:
        params["C"] = trial.suggest_float("C", 1e-3, 100.0, log=True)
    return params


def build_model(params: dict[str, Any], seed: int = 0,
                categorical: tuple[str, ...] | list[str] = ()) -> Any:
    """The classifier of a configuration (``categorical``: the native family's code columns).

    Boosters stop early on a seeded 10 % of their train rows (``max_iter`` is a ceiling)."""
    if params["model"] in ("hgb", "hgb_native"):
        native = params["model"] in NATIVE_FAMILIES
        return HistGradientBoostingClassifier(
            learning_rate=float(params["learning_rate"]), max_iter=int(params["max_iter"]),
            max_leaf_nodes=int(params["max_leaf_nodes"]),
            min_samples_leaf=int(params["min_samples_leaf"]),
            l2_regularization=float(params["l2_regularization"]),
            categorical_features=list(categorical) if native and categorical else None,
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=20,
            random_state=seed,
        )
    if params["model"] == "logreg":
        return LogisticRegression(C=float(params["C"]), max_iter=2000)
    raise ValueError(f"unknown model family {params['model']!r}")


def build_candidate(params: dict[str, Any], seed: int = 0,
                    categorical: tuple[str, ...] | list[str] = ()) -> Any:
    """The classifier, behind ``[("balance", sampler)]`` when balancing (the sampler acts in
    ``fit`` only); a bare classifier otherwise, so serving calls it directly."""
    model = build_model(params, seed, categorical)
    if params.get("balance"):
        return ImbPipeline([("balance", F.SmoteUnderSampler(random_state=seed)),
                            ("clf", model)])
    return model


@dataclass
class SearchData:
    """The train rows as each family reads them (same rows, same order) and the newest
    month's mask: what every trial needs, prepared once."""

    frames: dict[str, pd.DataFrame]
    y: np.ndarray
    newest: np.ndarray | None = None
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @property
    def families(self) -> tuple[str, ...]:
        """The families a search over these rows compares. Under the temporal objective only
        the native ones: the encoded families' input comes from the ETL's target encoding,
        fitted on every train month, the newest included, so their score on that month
        would be optimistic (the trainer's temporal evaluation refits them honestly)."""
        have = set(self.frames)
        out = [] if self.newest is not None else \
            [f for f in ENCODED_FAMILIES if "encoded" in have]
        out += [f for f in NATIVE_FAMILIES if "native" in have]
        return tuple(out)


def prepare_search_data(inputs: dict[str, pd.DataFrame], y: Any, months: Any = None, *,
                        max_rows: int | None = None, seed: int = 0) -> SearchData:
    """``inputs``: the family inputs by stage name (``select``'s features, ``outliers``).

    Fits the native families' category codes (label-free) on these rows; the temporal
    objective holds out the newest of ``months`` (``YYYY-MM`` per row), the others are
    subsampled (stratified, seeded) to at most ``max_rows``."""
    y_arr = np.asarray(y).astype(int)
    frames: dict[str, pd.DataFrame] = {}
    categorical: dict[str, list[str]] = {}
    for key, stage_frame in inputs.items():
        if len(stage_frame) != len(y_arr):
            raise ValueError(f"{key}: {len(stage_frame)} rows for {len(y_arr)} labels")
    encoded = inputs.get(input_stage("hgb"))
    if encoded is not None:
        frames["encoded"] = encoded.reset_index(drop=True)
    native = inputs.get(NATIVE_INPUT_STAGE)
    if native is not None:
        for key, interactions in (("native", False), ("native_interactions", True)):
            codes = family_steps({"model": "hgb_native", "interactions": interactions})[0][1]
            frames[key] = codes.fit_transform(native).reset_index(drop=True)
            categorical[key] = list(codes.categorical_)
    newest = None
    if months is not None:
        month_arr = np.asarray([str(m) for m in months], dtype=object)
        newest = month_arr == max(month_arr.tolist())
        if newest.sum() < TEMPORAL_MIN_ROWS or (~newest).sum() < TEMPORAL_MIN_ROWS \
                or len(set(y_arr[newest].tolist())) < 2:
            newest = None
    keep = np.arange(len(y_arr))
    if max_rows is not None:
        earlier = keep if newest is None else keep[~newest]
        if len(earlier) > max_rows:
            earlier, _ = train_test_split(earlier, train_size=max_rows, stratify=y_arr[earlier],
                                          random_state=seed)
        keep = np.sort(earlier if newest is None else np.concatenate([earlier,
                                                                      keep[newest]]))
    return SearchData(frames={k: v.iloc[keep].reset_index(drop=True) for k, v in frames.items()},
                      y=y_arr[keep], newest=None if newest is None else newest[keep],
                      categorical=categorical)


def temporal_scores(candidate: Any, X: pd.DataFrame, y: np.ndarray,
                    newest: np.ndarray) -> dict[str, float]:
    """Fit on the earlier months, score the newest one (ROC AUC, PR AUC, Brier, log loss)."""
    started = time.perf_counter()
    candidate.fit(X[~newest], y[~newest])
    fit_seconds = time.perf_counter() - started
    p = candidate.predict_proba(X[newest])[:, 1]
    y_new = y[newest]
    return {"roc_auc": float(roc_auc_score(y_new, p)),
            "pr_auc": float(average_precision_score(y_new, p)),
            "brier": float(brier_score_loss(y_new, p)),
            "log_loss": float(log_loss(y_new, p, labels=[0, 1])),
            "fit_seconds": fit_seconds}


def evaluate_params(params: dict[str, Any], data: SearchData, folds: int,
                    seed: int = 0) -> dict[str, float]:
    """One trial's scores: temporal when the data has a newest month, else stratified CV."""
    key = family_key(params)
    X = data.frames[key]
    candidate = build_candidate(params, seed, data.categorical.get(key, ()))
    if data.newest is not None:
        return temporal_scores(candidate, X, data.y, data.newest)
    return cv_scores(candidate, X, data.y, folds, seed)


def cv_scores(candidate: Any, X: pd.DataFrame, y: Any, folds: int,
              seed: int = 0) -> dict[str, float]:
    """Mean stratified-CV metrics (ROC AUC, PR AUC, F1 at 0.5, Brier, log loss, fit time)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = cross_validate(candidate, X, np.asarray(y).astype(int), cv=splitter,
                            scoring=SCORING, n_jobs=1, error_score="raise")
    out = {}
    for name in SCORING:
        values = result[f"test_{name}"]
        out[name] = float(-values.mean() if name in _NEGATED else values.mean())
    out["roc_auc_std"] = float(result["test_roc_auc"].std())
    out["fit_seconds"] = float(result["fit_time"].mean())
    return out


def subsample(X: pd.DataFrame, y: Any, max_rows: int | None,
              seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A stratified, seeded subsample of at most ``max_rows`` rows."""
    y_arr = np.asarray(y).astype(int)
    if max_rows is None or len(X) <= max_rows:
        return X, y_arr
    X_sub, _, y_sub, _ = train_test_split(X, y_arr, train_size=max_rows, stratify=y_arr,
                                          random_state=seed)
    return X_sub, y_sub


def run_search(data: SearchData, *, n_trials: int, timeout: float | None, folds: int,
               seed: int = 0, log_to_mlflow: bool = True, storage: str | None = None,
               study_name: str | None = None) -> SearchResult:
    """Optuna search over ``data``'s families; one nested MLflow run per trial under the
    active run (if any). ``storage`` (an Optuna RDB URL) shares the study with other
    processes (:func:`run_trials`); in memory otherwise.

    ``timeout`` (seconds) stops the study between trials; at least one trial always runs.
    """
    started = time.perf_counter()
    study = open_study(study_name, storage, seed, data.families)
    run_trials(study, data, n_trials=n_trials, timeout=timeout, folds=folds, seed=seed,
               log_to_mlflow=log_to_mlflow)
    return search_result(study, data, seconds=time.perf_counter() - started)


def open_study(study_name: str | None, storage: str | None, seed: int,
               families: tuple[str, ...]) -> Any:
    """The (shared) study: created with the default trials enqueued, or loaded as it is."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name=study_name, storage=storage,
                                # several processes share a stored study: each running
                                # trial counts as its worst value, so they spread out
                                sampler=optuna.samplers.TPESampler(
                                    seed=seed, constant_liar=storage is not None),
                                load_if_exists=storage is not None)
    if not study.trials:
        for trial in DEFAULT_TRIALS:
            if trial["model"] in families:
                study.enqueue_trial(dict(trial), skip_if_exists=True)
    return study


def run_trials(study: Any, data: SearchData, *, n_trials: int, timeout: float | None,
               folds: int, seed: int = 0, log_to_mlflow: bool = True,
               parent_run_id: str | None = None,
               user_attrs: dict[str, Any] | None = None) -> int:
    """Run ``n_trials`` trials of ``study`` here (several processes may share one study).

    ``parent_run_id``: the MLflow run the trials nest under when this process has no active
    run (a mapped search task); ``user_attrs``: stored on each trial (which task ran it)."""
    families = data.families

    def objective(trial: Any) -> float:
        for key, value in (user_attrs or {}).items():
            trial.set_user_attr(key, value)
        params = suggest_params(trial, families)
        scores = evaluate_params(params, data, folds, seed)
        trial.set_user_attr("cv", scores)
        trial.set_user_attr("params", params)
        if log_to_mlflow:
            _log_trial(trial.number, params, scores, len(data.y), folds, parent_run_id)
        log.info("trial %d %s: roc_auc %.4f", trial.number, params, scores["roc_auc"])
        return scores["roc_auc"]

    study.optimize(objective, n_trials=max(1, n_trials), timeout=timeout,
                   gc_after_trial=True)
    return n_trials


def search_result(study: Any, data: SearchData, seconds: float) -> SearchResult:
    """The best complete trial of ``study`` and a row per complete trial."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no search trial completed")
    best = max(complete, key=lambda t: (t.value, -t.number))
    records = [{"trial": t.number, **t.user_attrs.get("params", t.params),
                **{f"cv_{k}": v for k, v in t.user_attrs.get("cv", {}).items()}}
               for t in complete]
    return SearchResult(
        best_params=dict(best.user_attrs.get("params", best.params)),
        best_score=float(best.value), best_trial=best.number, n_trials=len(complete),
        rows=len(data.y), seconds=round(seconds, 3), trials=records,
        best_cv=dict(best.user_attrs.get("cv", {})),
        objective="temporal" if data.newest is not None else "cv",
    )


def _log_trial(number: int, params: dict[str, Any], scores: dict[str, float], rows: int,
               folds: int, parent_run_id: str | None = None) -> None:
    import mlflow

    with mlflow.start_run(run_name=f"trial-{number:03d}", nested=True,
                          parent_run_id=parent_run_id):
        mlflow.set_tags({"kind": "search-trial", "trial": str(number)})
        mlflow.log_params({**params, "search_rows": rows, "cv_folds": folds})
        mlflow.log_metrics({f"cv_{k}": v for k, v in scores.items() if math.isfinite(v)})
