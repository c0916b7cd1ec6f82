"""Analysis helpers for the notebooks: read the lake and the registry, tabulate, plot.

The notebooks in ``notebooks/`` are thin: every table and figure they show comes from a
function here or in :mod:`chicago_crime.model.evaluate`, so the logic is unit-tested and shared.

* EDA (``01_eda``): arrest rates by group (:func:`arrest_rates`), distance bins
  (:func:`arrest_rate_by_distance`), the crime/station map (:func:`plot_crime_map`) and data
  quality (:func:`quarantine_summary`, :func:`etl_quality_metrics`, :func:`quality_summary`).
* Model analysis (``02_model_analysis``): registered versions by alias
  (:func:`load_registered`, :func:`previous_champion`), the month's raw test split
  (:func:`month_split`), model comparison (:func:`compare_models`) and errors per group
  (:func:`errors_by_group`).

The month analysed is read from ``NOTEBOOK_MONTH`` (:func:`notebook_month`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from chicago_crime import etl, layout
from chicago_crime import features as F
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.model import evaluate as ev
from chicago_crime.model import registry

MONTH_ENV = "NOTEBOOK_MONTH"
DEFAULT_MONTH = "2018-06"
SEASON_ORDER: tuple[str, ...] = ("Winter", "Spring", "Summer", "Fall")
#: Distance-to-station bin edges in feet (1 mile = 5,280 ft); the last bin is open.
DISTANCE_EDGES_FT: tuple[float, ...] = (0, 1_320, 2_640, 5_280, 7_920, 10_560, 15_840, math.inf)
_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def notebook_month(default: str = DEFAULT_MONTH) -> str:
    """The month to analyse: ``$NOTEBOOK_MONTH`` or ``default`` (``YYYY-MM``, validated)."""
    month = (os.environ.get(MONTH_ENV) or default).strip()
    if not _MONTH_RE.match(month):
        raise ValueError(f"{MONTH_ENV} must be YYYY-MM, got {month!r}")
    return month


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def show(fig: Any) -> None:
    """Display a figure once in a notebook and close it.

    Works whatever the active backend is (:mod:`chicago_crime.model.evaluate` switches matplotlib
    to Agg, after which the inline backend no longer shows new figures by itself).
    """
    from IPython.display import display

    display(fig)
    _pyplot().close(fig)


# --------------------------------------------------------------------------------------------
# EDA: arrest rates
# --------------------------------------------------------------------------------------------
def arrest_labels(values: Any) -> pd.Series:
    """1.0 / 0.0 / NaN from the lake's ``arrest`` column (``"true"``/``"false"``/empty)."""
    return pd.Series(R.map_unique(np.asarray(values, dtype=object), R.to_bool).astype(float))


def arrest_rates(df: pd.DataFrame, by: str, min_rows: int = 1,
                 order: Sequence[Any] | None = None) -> pd.DataFrame:
    """Records, arrests and arrest rate per value of ``by`` (unlabelled rows are ignored).

    Missing group values are reported as :data:`features.MISSING`. Rows are sorted by
    ``order`` when given (values not in it go last), else by record count (largest first).
    """
    y = arrest_labels(df[R.TARGET]).to_numpy()
    labelled = ~np.isnan(y)
    groups = pd.Series(df[by].to_numpy(dtype=object)[labelled], dtype=object)
    groups = groups.where(groups.notna(), F.MISSING)
    frame = pd.DataFrame({by: groups.to_numpy(), "y": y[labelled]})
    table = frame.groupby(by, sort=False)["y"].agg(rows="size", arrests="sum").reset_index()
    table["arrests"] = table["arrests"].astype(int)
    table["arrest_rate"] = table["arrests"] / table["rows"]
    table = table[table["rows"] >= min_rows]
    if order is not None:
        rank = {value: i for i, value in enumerate(order)}
        table = table.assign(_rank=[rank.get(v, len(rank)) for v in table[by]])
        table = table.sort_values(["_rank", by], kind="mergesort").drop(columns="_rank")
    else:
        table = table.sort_values(["rows", by], ascending=[False, True], kind="mergesort")
    return table.reset_index(drop=True)


def code_order(values: Any) -> list[str]:
    """Distinct area codes (district, beat, ward ...) in numeric order, non-numeric ones last."""
    distinct = {str(v) for v in pd.Series(values, dtype=object).dropna()}
    return sorted(distinct, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))


def arrest_rate_by_distance(df: pd.DataFrame,
                            edges_ft: Sequence[float] = DISTANCE_EDGES_FT) -> pd.DataFrame:
    """Arrest rate per distance-to-station bin (``[low, high)`` feet; rows without
    coordinates form the bin ``"no coordinates"``)."""
    dist = df[F.DIST_COL].to_numpy(dtype=float)
    labels = [_distance_label(lo, hi) for lo, hi in itertools.pairwise(edges_ft)]
    binned = pd.cut(dist, bins=list(edges_ft), right=False, labels=labels)
    names = pd.Series(binned, dtype=object).where(~np.isnan(dist), "no coordinates")
    frame = df[[R.TARGET]].assign(distance=names.to_numpy())
    return arrest_rates(frame, "distance", order=[*labels, "no coordinates"])


def _distance_label(low: float, high: float) -> str:
    miles = lambda ft: f"{ft / 5280:g}"  # noqa: E731
    return f">= {miles(low)} mi" if math.isinf(high) else f"{miles(low)}-{miles(high)} mi"


def _label(value: Any) -> str:
    """Axis label of a group value (whole floats such as hours without ``.0``)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def plot_arrest_rates(table: pd.DataFrame, by: str, title: str | None = None,
                      top: int | None = None, overall: float | None = None,
                      horizontal: bool | None = None) -> Any:
    """Bar chart of an :func:`arrest_rates` table (``top`` largest groups when given)."""
    plt = _pyplot()
    data = table.head(top) if top else table
    horizontal = len(data) > 12 if horizontal is None else horizontal
    labels = [_label(v) for v in data[by]]
    if horizontal:
        fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(data) + 1)))
        ax.barh(labels[::-1], data["arrest_rate"].to_numpy()[::-1])
        ax.set(xlabel="arrest rate", ylabel=by)
        if overall is not None:
            ax.axvline(overall, linestyle=":", color="grey", label=f"overall {overall:.1%}")
    else:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(data) + 2), 3.8))
        ax.bar(labels, data["arrest_rate"].to_numpy())
        ax.set(xlabel=by, ylabel="arrest rate")
        ax.tick_params(axis="x", rotation=45 if max(map(len, labels), default=0) > 3 else 0)
        if overall is not None:
            ax.axhline(overall, linestyle=":", color="grey", label=f"overall {overall:.1%}")
    if overall is not None:
        ax.legend(loc="best")
    ax.set_title(title or f"Arrest rate by {by}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# EDA: map and distance
# --------------------------------------------------------------------------------------------
def station_table(lake: Lake, month: str) -> pd.DataFrame:
    """District police stations of ``month`` (``district``, ``x``, ``y`` in EPSG:3435 feet),
    prepared exactly as the enricher prepares them."""
    return F.prepare_stations(etl.read_stations(lake, month))


def plot_crime_map(df: pd.DataFrame, stations: pd.DataFrame, max_points: int = 60_000,
                   seed: int = 0) -> Any:
    """Crimes (x/y, EPSG:3435 feet; arrests in a second colour) and district stations.

    At most ``max_points`` seeded random records are drawn; no map tiles are needed.
    """
    plt = _pyplot()
    located = df[df["x_coordinate"].notna() & df["y_coordinate"].notna()]
    if len(located) > max_points:
        located = located.sample(n=max_points, random_state=seed)
    arrested = arrest_labels(located[R.TARGET]).to_numpy() == 1.0
    fig, ax = plt.subplots(figsize=(7, 8.5))
    for mask, colour in ((~arrested, "tab:blue"), (arrested, "tab:orange")):
        ax.scatter(located["x_coordinate"].to_numpy()[mask],
                   located["y_coordinate"].to_numpy()[mask], s=1, alpha=0.3, c=colour,
                   rasterized=True, linewidths=0)
    ax.scatter(stations["x"], stations["y"], marker="*", s=180, c="black",
               edgecolors="white", zorder=3)
    for row in stations.itertuples():
        ax.annotate(str(row.district), (row.x, row.y), xytext=(5, 4),
                    textcoords="offset points", fontsize=8, zorder=4)
    ax.set(xlabel="x (ft, EPSG:3435)", ylabel="y (ft, EPSG:3435)",
           title=f"Crimes ({len(located):,} drawn) and police stations")
    ax.set_aspect("equal")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colour,
                      label=f"{label} ({count:,})")
               for label, colour, count in (("no arrest", "tab:blue", int((~arrested).sum())),
                                            ("arrest", "tab:orange", int(arrested.sum())))]
    handles.append(Line2D([], [], linestyle="", marker="*", markersize=12, color="black",
                          label="district police station"))
    ax.legend(handles=handles, loc="lower left")
    fig.tight_layout()
    return fig


def plot_distance_distribution(df: pd.DataFrame, max_ft: float = 30_000, bins: int = 60) -> Any:
    """Histogram (density) of distance to the nearest station, arrests vs. no arrests."""
    plt = _pyplot()
    dist = df[F.DIST_COL].to_numpy(dtype=float)
    y = arrest_labels(df[R.TARGET]).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    for value, label in ((0.0, "no arrest"), (1.0, "arrest")):
        values = dist[(y == value) & ~np.isnan(dist)]
        if len(values):
            ax.hist(values, bins=bins, range=(0, max_ft), density=True, histtype="step",
                    linewidth=1.5, label=f"{label} (median {np.median(values):,.0f} ft)")
    ax.set(xlabel="distance to nearest district station (ft)", ylabel="density",
           title="Distance to the nearest police station")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# EDA: data quality
# --------------------------------------------------------------------------------------------
def quarantine_summary(lake: Lake, month: str,
                       months: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantined (invalid) records of the window's months (``layout.quarantine_key``).

    Returns ``(per_month, per_reason)``: rows per month (0 when nothing was quarantined) and
    rows per validation reason over the whole window.
    """
    from chicago_crime.ingest import read_raw_csv
    from chicago_crime.validation import REASON

    per_month, reasons = [], []
    for m in layout.month_range(month, months):
        key = layout.quarantine_key(m)
        frame = read_raw_csv(lake, key) if lake.exists(key) else None
        per_month.append({"month": m, "quarantined_rows": 0 if frame is None else len(frame),
                          "key": key if frame is not None else ""})
        if frame is not None and REASON in frame.columns:
            reasons.extend(frame[REASON].fillna("").astype(str))
    by_reason = pd.Series(reasons, dtype=object).value_counts().rename_axis("reason")
    return pd.DataFrame(per_month), by_reason.rename("rows").reset_index()


def etl_quality_metrics(month: str, settings: Settings | None = None,
                        client: Any | None = None) -> dict[str, float]:
    """Metrics of the month's current data-quality run in MLflow (``{}`` when there is none).

    The ETL DAG logs one run per month in ``settings.etl_experiment`` tagged ``month`` and
    ``latest=true`` (:func:`chicago_crime.etl.log_quality_run`), including the ingest counts
    (``ingest_invalid_rows``, ``ingest_duplicate_rows``) that no lake report holds.
    """
    s = settings or get_settings()
    _quiet_mlflow()
    client = client or registry.client_for(s)
    experiment = client.get_experiment_by_name(s.etl_experiment)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.month = '{month}' and tags.latest = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return dict(runs[0].data.metrics) if runs else {}


def stage_table(reports: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ETL stage report: rows in/out (per part), arrest rate(s) and seconds."""
    rows = []
    for stage, rep in reports.items():
        row: dict[str, Any] = {"stage": stage}
        for direction in ("rows_in", "rows_out"):
            value = rep.get(direction)
            if isinstance(value, Mapping):
                row.update({f"{direction}_{part}": n for part, n in value.items()})
            else:
                row[direction] = value
        balance = rep.get("class_balance") or {}
        if "arrest_rate" in balance:
            row["arrest_rate"] = balance["arrest_rate"]
        else:
            row.update({f"arrest_rate_{part}": (b or {}).get("arrest_rate")
                        for part, b in balance.items()})
        row["seconds"] = rep.get("seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def quality_summary(enriched: pd.DataFrame, reports: Mapping[str, Mapping[str, Any]],
                    quarantined_rows: int,
                    etl_metrics: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per data-quality check: measured on the enriched data and as the stage
    reports (and the ETL's MLflow run) recorded it."""
    enrich = reports.get("enrich", {})
    split = reports.get("split", {})
    metrics = etl_metrics or {}
    y = arrest_labels(enriched[R.TARGET])
    no_xy = enriched["x_coordinate"].isna() | enriched["y_coordinate"].isna()
    rows = [
        ("records in the enriched window", len(enriched), enrich.get("rows_out")),
        ("records without usable coordinates", int(no_xy.sum()),
         enrich.get("missing_coordinates")),
        ("records without distance to a station", int(enriched[F.DIST_COL].isna().sum()),
         enrich.get("missing_coordinates")),
        ("records without arrest label", int(y.isna().sum()), enrich.get("missing_target")),
        ("unlabelled records dropped by the split", None,
         (split.get("details") or {}).get("dropped_unlabelled")),
        ("quarantined (invalid) records in the window", quarantined_rows,
         metrics.get("ingest_invalid_rows")),
        ("duplicate records dropped from the window", None,
         metrics.get("ingest_duplicate_rows")),
    ]
    for col in ("primary_type", "district", "location_description", "date"):
        if col in enriched.columns:
            rows.append((f"records without {col}", int(enriched[col].isna().sum()), None))
    frame = pd.DataFrame(rows, columns=["check", "measured", "reported"])
    frame["share_of_records"] = frame["measured"].astype(float) / max(len(enriched), 1)
    return frame


# --------------------------------------------------------------------------------------------
# model analysis: registry
# --------------------------------------------------------------------------------------------
@dataclass
class RegisteredModel:
    """A loaded model version and its model card (:class:`registry.ModelCard`)."""

    card: registry.ModelCard
    alias: str | None
    tags: dict[str, str]
    model: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def run_id(self) -> str | None:
        return self.card.run_id

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias \
            else f"models:/{self.name}/{self.version}"

    @property
    def threshold(self) -> float:
        """The decision threshold on the card (0.5 for a version without a card)."""
        return 0.5 if self.card.threshold is None else self.card.threshold

    def predict(self, raw: pd.DataFrame) -> np.ndarray:
        """Arrest probabilities of raw records."""
        return np.asarray(self.model.predict_proba(R.model_frame(raw))[:, 1], dtype=float)


def _quiet_mlflow() -> None:
    """No tqdm noise in notebooks: MLflow's download progress bars are turned off, and tqdm's
    warning about kernels without ipywidgets is silenced."""
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _configure_mlflow(settings: Settings) -> None:
    _quiet_mlflow()
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def _registered(client: Any, name: str, version: Any, alias: str | None,
                load: Callable[[str, str], Any]) -> RegisteredModel:
    return RegisteredModel(card=registry.ModelCard.from_version(name, version), alias=alias,
                           tags=dict(version.tags or {}),
                           model=load(name, str(version.version)))


def load_registered(alias: str | None = None, settings: Settings | None = None,
                    client: Any | None = None,
                    load: Callable[[str, str], Any] = registry.load_version,
                    ) -> RegisteredModel | None:
    """The version ``alias`` (default: the champion alias) points at, loaded with the sklearn
    flavour (None when unset).

    The alias is resolved once and that exact version is loaded, so the card shown and the
    model scored are the same version even if the alias moves meanwhile.
    """
    s = settings or get_settings()
    _configure_mlflow(s)
    client = client or registry.client_for(s)
    alias = alias or s.champion_alias
    version = registry.version_by_alias(client, s.model_name, alias)
    return None if version is None else _registered(client, s.model_name, version, alias, load)


def previous_champion(current: RegisteredModel, settings: Settings | None = None,
                      client: Any | None = None,
                      load: Callable[[str, str], Any] = registry.load_version,
                      ) -> RegisteredModel | None:
    """The version ``current`` replaced as champion (its ``previous_champion`` tag), or None."""
    previous = current.tags.get(registry.PREVIOUS_TAG)
    if not previous:
        return None
    s = settings or get_settings()
    _configure_mlflow(s)
    client = client or registry.client_for(s)
    version = client.get_model_version(current.name, previous)
    return _registered(client, current.name, version, None, load)


# --------------------------------------------------------------------------------------------
# model analysis: data and comparisons
# --------------------------------------------------------------------------------------------
@dataclass
class MonthSplit:
    """The month's raw records split as the ETL split them, with 0/1 labels."""

    raw_train: pd.DataFrame
    raw_test: pd.DataFrame
    y_train: np.ndarray
    y_test: np.ndarray


def month_split(month: str, lake: Lake | None = None,
               settings: Settings | None = None) -> MonthSplit:
    """Raw train/test records of ``month`` (:func:`etl.split_raw_window`) and their labels."""
    s = settings or get_settings()
    split = etl.split_raw_window(month, lake or Lake(settings=s), s)
    if split is None:
        raise FileNotFoundError(f"no raw window or split stage for {month}: run the ETL first")
    raw_train, raw_test = split
    return MonthSplit(raw_train, raw_test, R.labels(raw_train).astype(int),
                      R.labels(raw_test).astype(int))


def iucr_baseline(split: MonthSplit) -> np.ndarray:
    """Test probabilities of the IUCR-rate baseline fitted on the train records."""
    baseline = ev.IucrRateBaseline().fit(split.raw_train, split.y_train)
    return baseline.predict_proba(split.raw_test)[:, 1]


def group_labels(raw: pd.DataFrame, column: str) -> list[str]:
    """A raw column normalised like the enricher does (e.g. ``district`` ``'011'`` -> ``'11'``),
    missing values as :data:`features.MISSING`."""
    norm = R.CATEGORICAL_NORMALIZERS.get(column, R.norm_text)
    return [norm(v) or F.MISSING for v in raw[column]]


def compare_models(y: Any, probabilities: Mapping[str, Any],
                   thresholds: Mapping[str, float] | float) -> pd.DataFrame:
    """:func:`evaluate.binary_metrics` of each model on the same labels, one row per model.

    ``thresholds`` is one threshold for all or one per model (F1/precision/recall use it).
    """
    rows = []
    for name, p in probabilities.items():
        threshold = thresholds if isinstance(thresholds, int | float) else thresholds[name]
        rows.append({"model": name, "threshold": float(threshold),
                     **ev.binary_metrics(y, p, float(threshold))})
    return pd.DataFrame(rows).set_index("model")


def errors_by_group(y: Any, p: Any, groups: Any, threshold: float,
                    min_rows: int = 100) -> pd.DataFrame:
    """Per-group metrics (:func:`evaluate.metrics_by_group`) plus error counts at
    ``threshold``: false positives, false negatives, error rate, and the calibration gap
    (mean predicted probability minus observed arrest rate)."""
    y_arr = np.asarray(y).astype(int)
    pred = (np.asarray(p, dtype=float) >= threshold).astype(int)
    labels = pd.Series(np.asarray(groups, dtype=object)).fillna(F.MISSING).astype(str)
    counts = pd.DataFrame({"group": labels.to_numpy(),
                           "false_positives": (pred == 1) & (y_arr == 0),
                           "false_negatives": (pred == 0) & (y_arr == 1)})
    counts = counts.groupby("group").sum().astype(int)
    table = ev.metrics_by_group(y_arr, p, labels.to_numpy(), threshold, min_rows=min_rows)
    if table.empty:
        return table
    table = table.join(counts, on="group")
    table["error_rate"] = (table["false_positives"] + table["false_negatives"]) / table["rows"]
    table["calibration_gap"] = table["mean_probability"] - table["arrest_rate"]
    table["rows"] = table["rows"].astype(int)
    columns = ["group", "rows", "arrest_rate", "mean_probability", "calibration_gap",
               "roc_auc", "pr_auc", "precision", "recall", "f1", "false_positives",
               "false_negatives", "error_rate", "ece"]
    return table[columns]


def plot_roc_pr(y: Any, probabilities: Mapping[str, Any]) -> Any:
    """ROC and precision-recall curves of several models on the same labels."""
    plt = _pyplot()
    y_arr = np.asarray(y).astype(int)
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, p in probabilities.items():
        p_arr = np.asarray(p, dtype=float)
        fpr, tpr, _ = roc_curve(y_arr, p_arr)
        auc = ev.gate_score("roc_auc", y_arr, p_arr)
        roc.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        precision, recall, _ = precision_recall_curve(y_arr, p_arr)
        pr.plot(recall, precision,
                label=f"{name} (AP {average_precision_score(y_arr, p_arr):.3f})")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves")
    pr.axhline(y_arr.mean(), linestyle=":", color="grey", label="arrest rate")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall curves")
    roc.legend(loc="lower right")
    pr.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_group_errors(table: pd.DataFrame, title: str, top: int = 15) -> Any:
    """Observed arrest rate vs. mean predicted probability and error rate of the ``top``
    largest groups of an :func:`errors_by_group` table."""
    plt = _pyplot()
    data = table.head(top)
    labels = [str(g) for g in data["group"]][::-1]
    pos = np.arange(len(labels))
    fig, (rates, errors) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.32 * len(data) + 1.2)),
                                        sharey=True)
    rates.barh(pos - 0.2, data["arrest_rate"].to_numpy()[::-1], height=0.4, label="observed")
    rates.barh(pos + 0.2, data["mean_probability"].to_numpy()[::-1], height=0.4,
               label="mean predicted")
    rates.set(yticks=pos, yticklabels=labels, xlabel="arrest rate", title=title)
    rates.legend(loc="lower right")
    errors.barh(pos, data["error_rate"].to_numpy()[::-1], color="tab:red")
    errors.set(xlabel="error rate at the model's threshold", title="Misclassified share")
    fig.tight_layout()
    return fig
