"""Drift of one column between a reference sample and a current one: PSI plus a test.

* **PSI** (population stability index) over bins taken from the reference: quantile bins for
  a numeric column (deciles, repeated edges merged), the reference's most frequent categories
  plus "other" for a categorical one, and a bin of its own for missing values in both cases
  (a column that starts arriving empty drifts). ``sum((cur - ref) * ln(cur / ref))`` over the
  bins, shares floored at :data:`EPSILON` so an empty bin stays finite. Rule of thumb: < 0.1
  stable, 0.1-0.2 moderate, >= 0.2 a real shift.
* **The test**: two-sample Kolmogorov-Smirnov for a numeric column (its non-missing values),
  chi-squared on the 2 x bins contingency table for a categorical one.

A column **drifted** when ``psi >= psi_threshold`` *and* ``p < alpha``: with tens of thousands
of records any difference is "significant", so the p-value alone would flag everything; the
PSI says whether the shift is big enough to matter, the test that it is not sampling noise
(which matters for small months and rare categories).

Why not Evidently: its report would be richer, but ``evidently`` 0.7 pulls about 30 packages
into the one locked venv that Airflow, MLflow and the API share (statsmodels, nltk, litestar,
uvicorn[standard], plotly < 6, ...) plus ``iterative-telemetry``, which phones home unless
switched off; the platform needs two statistics per column and a readable report, which
scipy and a few lines of HTML give (:mod:`chicago_crime.monitoring.report`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

#: Floor of a bin's share in the PSI (an empty bin would make it infinite).
EPSILON = 1e-4
#: Quantile bins of a numeric column.
NUMERIC_BINS = 10
#: Categories of a categorical column kept as bins (the reference's most frequent); the rest
#: is one "other" bin (hundreds of rare beats or IUCR codes would make PSI pure noise).
TOP_CATEGORIES = 20
MISSING_BIN = "(missing)"
OTHER_BIN = "(other)"
NUMERIC, CATEGORICAL = "numeric", "categorical"


@dataclass(frozen=True)
class ColumnDrift:
    """The drift of one column: PSI, the test, the verdict and the bins (for the report)."""

    feature: str
    kind: str
    psi: float
    test: str
    statistic: float
    p_value: float
    drifted: bool
    reference_rows: int
    current_rows: int
    #: Bin label -> (reference share, current share), reference order.
    bins: list[tuple[str, float, float]] = field(default_factory=list)
    #: Why the column was not tested (too few values ...), else None.
    note: str | None = None

    def as_dict(self, with_bins: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["bins"] = [list(b) for b in self.bins] if with_bins else None
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items() if with_bins or k != "bins"}


def kind_of(values: pd.Series) -> str:
    """Numeric for numbers (booleans too, as 0/1), categorical for anything else."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return NUMERIC
    return CATEGORICAL


def psi(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    """PSI of two share vectors over the same bins (shares floored at :data:`EPSILON`)."""
    ref = np.maximum(np.asarray(reference_shares, dtype=float), EPSILON)
    cur = np.maximum(np.asarray(current_shares, dtype=float), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=float)


def _numeric_bins(reference: np.ndarray, current: np.ndarray,
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts per reference-quantile bin (+ missing) of both samples."""
    ref_valid, cur_valid = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(ref_valid):
        cuts = np.unique(np.quantile(ref_valid, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
    else:
        cuts = np.array([])
    edges = [-math.inf, *cuts.tolist(), math.inf]
    labels = [f"({lo:.4g}, {hi:.4g}]" for lo, hi in itertools.pairwise(edges)]
    n_bins = len(edges) - 1

    def counts(valid: np.ndarray, total: int) -> np.ndarray:
        idx = np.searchsorted(cuts, valid, side="left")  # value == cut -> the bin it closes
        out = np.bincount(idx, minlength=n_bins).astype(float)
        return np.append(out, total - len(valid))

    return ([*labels, MISSING_BIN], counts(ref_valid, len(reference)),
            counts(cur_valid, len(current)))


def _categorical_bins(reference: pd.Series, current: pd.Series,
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts per top reference category, "other" and missing, of both samples."""
    ref = reference.astype(object).where(reference.notna(), None)
    cur = current.astype(object).where(current.notna(), None)
    ref_text = ref.map(lambda v: MISSING_BIN if v is None else str(v))
    cur_text = cur.map(lambda v: MISSING_BIN if v is None else str(v))
    top = [c for c in ref_text[ref_text != MISSING_BIN].value_counts().index[:TOP_CATEGORIES]]
    labels = [*top, OTHER_BIN, MISSING_BIN]
    known = set(top) | {MISSING_BIN}

    def counts(text: pd.Series) -> np.ndarray:
        mapped = text.where(text.isin(known), OTHER_BIN)
        return mapped.value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)

    return labels, counts(ref_text), counts(cur_text)


def column_drift(feature: str, reference: pd.Series, current: pd.Series, *,
                 psi_threshold: float, alpha: float, kind: str | None = None) -> ColumnDrift:
    """PSI and the KS (numeric) or chi-squared (categorical) test of one column."""
    kind = kind or kind_of(reference)
    note = None
    if kind == NUMERIC:
        ref_arr = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
        cur_arr = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float)
        labels, ref_counts, cur_counts = _numeric_bins(ref_arr, cur_arr)
        test = "ks"
        ref_valid, cur_valid = ref_arr[~np.isnan(ref_arr)], cur_arr[~np.isnan(cur_arr)]
        if len(ref_valid) and len(cur_valid):
            result = stats.ks_2samp(ref_valid, cur_valid)
            statistic, p_value = float(result.statistic), float(result.pvalue)
        else:
            statistic, p_value, note = math.nan, math.nan, "no values to compare"
    else:
        labels, ref_counts, cur_counts = _categorical_bins(reference, current)
        test = "chi2"
        keep = (ref_counts + cur_counts) > 0
        table = np.vstack([ref_counts[keep], cur_counts[keep]])
        if table.shape[1] >= 2 and table[0].sum() and table[1].sum():
            statistic, p_value, _, _ = stats.chi2_contingency(table)
            statistic, p_value = float(statistic), float(p_value)
        else:
            statistic, p_value = 0.0, 1.0
            note = "a single category on both sides"
    ref_shares, cur_shares = _shares(ref_counts), _shares(cur_counts)
    value = psi(ref_shares, cur_shares) if len(current) and len(reference) else math.nan
    drifted = bool(math.isfinite(value) and value >= psi_threshold
                   and math.isfinite(p_value) and p_value < alpha)
    bins = [(label, round(float(r), 6), round(float(c), 6))
            for label, r, c in zip(labels, ref_shares, cur_shares, strict=True)]
    return ColumnDrift(feature=feature, kind=kind, psi=value, test=test, statistic=statistic,
                       p_value=p_value, drifted=drifted, reference_rows=len(reference),
                       current_rows=len(current), bins=bins, note=note)


def frame_drift(reference: pd.DataFrame, current: pd.DataFrame, *, prefix: str = "",
                psi_threshold: float, alpha: float) -> list[ColumnDrift]:
    """:func:`column_drift` of every column of ``reference`` (named ``prefix + column``)."""
    return [column_drift(f"{prefix}{col}", reference[col],
                         current[col] if col in current.columns
                         else pd.Series([None] * len(current), dtype=object),
                         psi_threshold=psi_threshold, alpha=alpha, kind=kind_of(reference[col]))
            for col in reference.columns]
