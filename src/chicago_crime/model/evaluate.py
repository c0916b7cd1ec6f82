"""Model evaluation: metrics, calibration error, plots, per-type metrics and two baselines
(the IUCR arrest-rate lookup and a plain native-categorical gradient booster).

Everything here works on plain arrays (``y`` true labels 0/1, ``p`` predicted arrest
probabilities), so the trainer, the benchmark and notebooks share one definition of each metric.

* ``pr_auc`` is the average precision (the step-wise area under the precision-recall curve).
* ``ece`` is the expected calibration error over :data:`ECE_BINS` equal-width probability bins:
  the row-weighted mean of ``|observed arrest rate - mean predicted probability|`` per bin.
* ``f1`` / ``precision`` / ``recall`` use the decision threshold (``p >= threshold``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from chicago_crime import features as F
from chicago_crime import record as R

ECE_BINS = 10
#: Primary metrics the registry gate can compare (all: higher is better).
GATE_METRICS = ("roc_auc", "pr_auc")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y).astype(int)
    p_arr = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels {y_arr.shape} and probabilities {p_arr.shape} differ in shape")
    return y_arr, p_arr


def expected_calibration_error(y: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """Row-weighted mean gap between observed rate and mean probability over equal-width bins."""
    y_arr, p_arr = _arrays(y, p)
    if len(y_arr) == 0:
        return math.nan
    bins = np.minimum((p_arr * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() * abs(y_arr[mask].mean() - p_arr[mask].mean())
    return float(total / len(y_arr))


def best_f1_threshold(y: Any, p: Any) -> tuple[float, float]:
    """``(threshold, f1)`` maximising F1 of ``p >= threshold`` (ties: the lowest threshold)."""
    y_arr, p_arr = _arrays(y, p)
    precision, recall, thresholds = precision_recall_curve(y_arr, p_arr)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def gate_score(metric: str, y: Any, p: Any) -> float:
    """The registry gate's score (higher is better) of probabilities ``p``."""
    y_arr, p_arr = _arrays(y, p)
    if metric == "roc_auc":
        return float(roc_auc_score(y_arr, p_arr))
    if metric == "pr_auc":
        return float(average_precision_score(y_arr, p_arr))
    raise ValueError(f"unsupported primary metric {metric!r}; expected one of {GATE_METRICS}")


def binary_metrics(y: Any, p: Any, threshold: float = 0.5) -> dict[str, float]:
    """ROC AUC, PR AUC, F1/precision/recall at ``threshold``, Brier, log loss, ECE, rates."""
    y_arr, p_arr = _arrays(y, p)
    pred = (p_arr >= threshold).astype(int)
    both = len(np.unique(y_arr)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both else math.nan,
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both else math.nan,
        "f1": float(f1_score(y_arr, pred, zero_division=0)),
        "precision": float(precision_score(y_arr, pred, zero_division=0)),
        "recall": float(recall_score(y_arr, pred, zero_division=0)),
        "brier": float(brier_score_loss(y_arr, p_arr)),
        "log_loss": float(log_loss(y_arr, p_arr, labels=[0, 1])),
        "ece": expected_calibration_error(y_arr, p_arr),
        "arrest_rate": float(y_arr.mean()) if len(y_arr) else math.nan,
        "mean_probability": float(p_arr.mean()) if len(p_arr) else math.nan,
        "rows": float(len(y_arr)),
    }


def metrics_by_group(y: Any, p: Any, groups: Any, threshold: float,
                     min_rows: int = 1) -> pd.DataFrame:
    """:func:`binary_metrics` per group (e.g. ``primary_type``), largest groups first."""
    y_arr, p_arr = _arrays(y, p)
    labels = pd.Series(np.asarray(groups, dtype=object)).fillna(F.MISSING).astype(str).to_numpy()
    rows = []
    for name in pd.unique(labels):
        mask = labels == name
        if mask.sum() < min_rows:
            continue
        rows.append({"group": name, **binary_metrics(y_arr[mask], p_arr[mask], threshold)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["rows", "group"], ascending=[False, True]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# baseline
# --------------------------------------------------------------------------------------------
class IucrRateBaseline:
    """Predicts each IUCR code's training arrest rate (unseen codes: the overall rate).

    Takes raw records (the ``iucr`` field, normalised like the model's enricher).
    """

    def fit(self, X: pd.DataFrame, y: Any) -> IucrRateBaseline:
        codes = pd.Series([R.norm_iucr(v) for v in X["iucr"]], dtype=object).fillna(F.MISSING)
        target = pd.Series(np.asarray(y).astype(float))
        self.global_rate_ = float(target.mean())
        self.rates_ = target.groupby(codes.to_numpy()).mean().to_dict()
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        codes = [R.norm_iucr(v) or F.MISSING for v in X["iucr"]]
        p = np.array([self.rates_.get(c, self.global_rate_) for c in codes], dtype=float)
        return np.column_stack([1.0 - p, p])


class NativeBoostingBaseline:
    """A plain ``HistGradientBoostingClassifier`` (default hyperparameters) with native
    categorical splits on the raw fields: the bar a tuned model has to clear.

    Categories: :data:`NATIVE_BASELINE_CATEGORIES` (coded by
    :class:`~chicago_crime.features.CategoryCodes`); numbers:
    :data:`NATIVE_BASELINE_NUMBERS`. Takes raw records; ``enricher`` is a fitted
    :class:`~chicago_crime.features.CrimeEnricher` (it parses dates and normalises the
    fields; it holds nothing learnt from labels).
    """

    def __init__(self, enricher: Any, seed: int = 0) -> None:
        self.enricher = enricher
        self.seed = seed

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        enriched = self.enricher.transform(R.model_frame(X))
        columns = [*NATIVE_BASELINE_CATEGORIES, *NATIVE_BASELINE_NUMBERS]
        out = enriched[columns].copy()
        for col in NATIVE_BASELINE_NUMBERS:
            out[col] = out[col].astype(float)
        return out

    def fit(self, X: pd.DataFrame, y: Any) -> NativeBoostingBaseline:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.codes_ = F.CategoryCodes().fit(self._frame(X))
        codes = self.codes_.transform(self._frame(X))
        self.model_ = HistGradientBoostingClassifier(
            categorical_features=list(self.codes_.categorical_), random_state=self.seed)
        self.model_.fit(codes, np.asarray(y).astype(int))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self.codes_.transform(self._frame(X)))


#: The plain native booster's categorical raw fields and numbers (the issue's definition).
NATIVE_BASELINE_CATEGORIES: tuple[str, ...] = (
    "iucr", "primary_type", "description", "location_description", "beat", "district", "ward",
    "community_area", "fbi_code",
)
NATIVE_BASELINE_NUMBERS: tuple[str, ...] = (
    "hour", "day_of_week", "month", "x_coordinate", "y_coordinate", "domestic",
)


# --------------------------------------------------------------------------------------------
# importance
# --------------------------------------------------------------------------------------------
def permutation_importance_frame(estimator: Any, X: pd.DataFrame, y: Any, seed: int = 0,
                                 n_repeats: int = 5, max_rows: int | None = 20_000,
                                 scoring: str = "roc_auc") -> pd.DataFrame:
    """Permutation importance (drop in ``scoring``) of each column of ``X``, largest first.

    ``estimator`` is the fitted classifier on the model features (the served pipeline's last
    step); at most ``max_rows`` stratified rows are used.
    """
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import train_test_split

    y_arr = np.asarray(y).astype(int)
    if max_rows is not None and len(X) > max_rows:
        X, _, y_arr, _ = train_test_split(X, y_arr, train_size=max_rows, stratify=y_arr,
                                          random_state=seed)
    result = permutation_importance(estimator, X, y_arr, scoring=scoring, n_repeats=n_repeats,
                                    random_state=seed, n_jobs=1)
    frame = pd.DataFrame({"feature": list(X.columns),
                          "importance_mean": result.importances_mean,
                          "importance_std": result.importances_std})
    return frame.sort_values("importance_mean", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# plots and the artifact bundle
# --------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(y: Any, p: Any, baseline: Any | None = None) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    y_arr, p_arr = _arrays(y, p)
    fpr, tpr, _ = roc_curve(y_arr, p_arr)
    ax.plot(fpr, tpr, label=f"model (AUC {roc_auc_score(y_arr, p_arr):.3f})")
    if baseline is not None:
        fpr_b, tpr_b, _ = roc_curve(y_arr, np.asarray(baseline, dtype=float))
        ax.plot(fpr_b, tpr_b, "--",
                label=f"IUCR-rate baseline (AUC {roc_auc_score(y_arr, baseline):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_pr(y: Any, p: Any, baseline: Any | None = None) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    y_arr, p_arr = _arrays(y, p)
    precision, recall, _ = precision_recall_curve(y_arr, p_arr)
    ax.plot(recall, precision,
            label=f"model (AP {average_precision_score(y_arr, p_arr):.3f})")
    if baseline is not None:
        pb, rb, _ = precision_recall_curve(y_arr, np.asarray(baseline, dtype=float))
        ax.plot(rb, pb, "--", label=f"IUCR-rate baseline "
                f"(AP {average_precision_score(y_arr, baseline):.3f})")
    ax.axhline(y_arr.mean(), linestyle=":", color="grey", label="arrest rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_calibration(y: Any, p: Any, n_bins: int = ECE_BINS) -> Any:
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    y_arr, p_arr = _arrays(y, p)
    observed, predicted = calibration_curve(y_arr, p_arr, n_bins=n_bins, strategy="uniform")
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.plot(predicted, observed, "o-",
            label=f"model (ECE {expected_calibration_error(y_arr, p_arr, n_bins):.4f})")
    ax.set(ylabel="observed arrest rate", title="Calibration curve")
    ax.legend(loc="upper left")
    hist.hist(p_arr, bins=n_bins, range=(0, 1))
    hist.set(xlabel="predicted arrest probability", ylabel="records")
    fig.tight_layout()
    return fig


def plot_confusion(y: Any, p: Any, threshold: float) -> Any:
    plt = _pyplot()
    y_arr, p_arr = _arrays(y, p)
    matrix = confusion_matrix(y_arr, (p_arr >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:,}", ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["no arrest", "arrest"],
           yticklabels=["no arrest", "arrest"], xlabel="predicted", ylabel="actual",
           title=f"Confusion matrix (threshold {threshold:.3f})")
    fig.tight_layout()
    return fig


def write_report(out_dir: str | Path, y: Any, p: Any, threshold: float,
                 groups: Sequence[Any] | None = None, baseline: Any | None = None,
                 importance: pd.DataFrame | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Write plots (PNG), per-type metrics (CSV + JSON), importance and a metrics JSON.

    Returns the test metrics (keys of :func:`binary_metrics`).
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = binary_metrics(y, p, threshold)
    figures = {
        "roc_curve.png": plot_roc(y, p, baseline),
        "pr_curve.png": plot_pr(y, p, baseline),
        "calibration_curve.png": plot_calibration(y, p),
        "confusion_matrix.png": plot_confusion(y, p, threshold),
    }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    summary: dict[str, Any] = {"threshold": threshold, "metrics": metrics}
    if baseline is not None:
        summary["baseline_iucr_rate"] = binary_metrics(y, baseline, threshold)
    if groups is not None:
        per_type = metrics_by_group(y, p, groups, threshold)
        per_type.to_csv(out / "metrics_by_primary_type.csv", index=False)
        (out / "metrics_by_primary_type.json").write_text(
            per_type.to_json(orient="records", indent=2))
    if importance is not None:
        importance.to_csv(out / "permutation_importance.csv", index=False)
    if extra:
        summary.update(extra)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return metrics
