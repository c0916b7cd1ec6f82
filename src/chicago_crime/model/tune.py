"""Hyperparameter search: Optuna (seeded TPE) over model family, hyperparameters and balancing.

A candidate is ``imblearn.pipeline.Pipeline([("balance", SmoteUnderSampler)?, ("clf", model)])``
scored with ``StratifiedKFold(cv_folds)``: the sampler runs inside ``fit`` of each fold, so
resampling touches the fold's training part only and every score comes from real, unbalanced
held-out rows. Each trial is one nested MLflow run (params + CV metrics) under the caller's
active parent run.

The search space:

* ``model``: ``hgb`` (``HistGradientBoostingClassifier``: learning rate, iterations, leaves,
  minimum leaf size, L2) or ``logreg`` (``LogisticRegression``: ``C``);
* ``balance``: SMOTE + under-sampling (``features.SmoteUnderSampler``) in the folds, or none.

The objective is the mean CV ROC AUC (ranking quality); probability quality comes from the
calibration step the trainer adds afterwards. The first trial is a fixed, sensible default
(gradient boosting, no balancing), so even a one-trial budget gives a good model.
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
DEFAULT_TRIAL: dict[str, Any] = {
    "model": "hgb", "balance": False, "learning_rate": 0.1, "max_iter": 300,
    "max_leaf_nodes": 31, "min_samples_leaf": 40, "l2_regularization": 1.0,
}


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


def suggest_params(trial: Any) -> dict[str, Any]:
    """Sample one configuration from the search space (Optuna ``Trial``)."""
    params: dict[str, Any] = {
        "model": trial.suggest_categorical("model", ["hgb", "logreg"]),
        "balance": trial.suggest_categorical("balance", [False, True]),
    }
    if params["model"] == "hgb":
        params.update(
            learning_rate=trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            max_iter=trial.suggest_int("max_iter", 100, 500, step=50),
            max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 15, 127, log=True),
            min_samples_leaf=trial.suggest_int("min_samples_leaf", 10, 200, log=True),
            l2_regularization=trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
        )
    else:
        params["C"] = trial.suggest_float("C", 1e-3, 100.0, log=True)
    return params


def build_model(params: dict[str, Any], seed: int = 0) -> Any:
    """The classifier of a configuration."""
    if params["model"] == "hgb":
        return HistGradientBoostingClassifier(
            learning_rate=float(params["learning_rate"]), max_iter=int(params["max_iter"]),
            max_leaf_nodes=int(params["max_leaf_nodes"]),
            min_samples_leaf=int(params["min_samples_leaf"]),
            l2_regularization=float(params["l2_regularization"]),
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=20,
            random_state=seed,
        )
    if params["model"] == "logreg":
        return LogisticRegression(C=float(params["C"]), max_iter=2000)
    raise ValueError(f"unknown model family {params['model']!r}")


def build_candidate(params: dict[str, Any], seed: int = 0) -> ImbPipeline:
    """``[("balance", sampler)?, ("clf", model)]``: the sampler acts in ``fit`` only."""
    steps: list[tuple[str, Any]] = []
    if params.get("balance"):
        steps.append(("balance", F.SmoteUnderSampler(random_state=seed)))
    steps.append(("clf", build_model(params, seed)))
    return ImbPipeline(steps)


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


def run_search(X: pd.DataFrame, y: Any, *, n_trials: int, timeout: float | None, folds: int,
               seed: int = 0, max_rows: int | None = SEARCH_MAX_ROWS,
               log_to_mlflow: bool = True) -> SearchResult:
    """Optuna search; one nested MLflow run per trial under the active run (if any).

    ``timeout`` (seconds) stops the study between trials; at least one trial always runs.
    """
    import optuna

    started = time.perf_counter()
    X_search, y_search = subsample(X, y, max_rows, seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(dict(DEFAULT_TRIAL))
    records: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = suggest_params(trial)
        scores = cv_scores(build_candidate(params, seed), X_search, y_search, folds, seed)
        trial.set_user_attr("cv", scores)
        records.append({"trial": trial.number, **params,
                        **{f"cv_{k}": v for k, v in scores.items()}})
        if log_to_mlflow:
            _log_trial(trial.number, params, scores, len(X_search), folds)
        log.info("trial %d %s: roc_auc %.4f", trial.number, params, scores["roc_auc"])
        return scores["roc_auc"]

    study.optimize(objective, n_trials=max(1, n_trials), timeout=timeout,
                   gc_after_trial=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no search trial completed")
    best = study.best_trial
    best_params = {k: v for k, v in best.params.items()}
    return SearchResult(
        best_params=best_params, best_score=float(best.value), best_trial=best.number,
        n_trials=len(complete), rows=len(X_search),
        seconds=round(time.perf_counter() - started, 3), trials=records,
        best_cv=dict(best.user_attrs.get("cv", {})),
    )


def _log_trial(number: int, params: dict[str, Any], scores: dict[str, float], rows: int,
               folds: int) -> None:
    import mlflow

    with mlflow.start_run(run_name=f"trial-{number:03d}", nested=True):
        mlflow.set_tags({"kind": "search-trial", "trial": str(number)})
        mlflow.log_params({**params, "search_rows": rows, "cv_folds": folds})
        mlflow.log_metrics({f"cv_{k}": v for k, v in scores.items() if math.isfinite(v)})
