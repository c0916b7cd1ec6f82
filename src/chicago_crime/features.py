"""Feature pipeline: fitted, picklable transformers from a raw crime record to model features.

Every step follows the scikit-learn API (``fit``/``transform``/``get_feature_names_out``) and
returns pandas DataFrames, so the ETL DAG materialises each stage in the lake and the training
code composes the *same* classes into the served pipeline::

    imblearn.pipeline.Pipeline([*stages.estimators(stations, seed), ("clf", model)])

(the stage table, :mod:`chicago_crime.stages`, names the class of each stage).

Each non-sampler step also has ``transform_record(record: dict) -> dict``: the same values as
``transform`` on a one-row frame, in plain Python/NumPy (no pandas), for the low-latency
serving path (``model.predict.RecordPredictor`` chains them).

Conventions (documented in ``docs/features.md``):

* coordinates are EPSG:3435 (NAD83 / Illinois East, US survey feet), the CRS of the portal's
  ``x_coordinate``/``y_coordinate``, read with the record contract's box
  (:func:`chicago_crime.record.coordinates`); the distance column is ``dist_to_station_ft``;
* ``season``: Dec-Feb Winter, Mar-May Spring, Jun-Aug Summer, Sep-Nov Fall;
* ``day_time``: Morning [06:00, 12:00), Afternoon [12:00, 18:00), Evening [18:00, 22:00),
  Night [22:00, 06:00);
* ``day_of_week``: 0 = Monday ... 6 = Sunday;
* time quality (:data:`TIME_QUALITY_COLUMNS`): how precisely the report's time was written
  down. A crime seen as it happened (often an on-view arrest) carries its exact minute; one
  reported later is often dated to the hour, to midnight, to noon or to the 1st of the month.
  ``minute``, ``day_of_month`` and 0/1 flags ``on_the_hour``, ``on_five_minutes``,
  ``at_midnight``, ``at_noon``; all read from the record's own ``date`` (no leakage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.feature_selection import mutual_info_classif
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler, TargetEncoder
from sklearn.utils.validation import check_is_fitted

from chicago_crime.record import (
    CATEGORICAL_NORMALIZERS,
    CRS_FEET,
    MODEL_FIELDS,
    calendar,
    column,
    coordinates,
    frame_coordinates,
    integer_text,
    is_missing,
    map_unique,
    parse_when,
    to_bool,
    to_float,
)

DIST_COL = "dist_to_station_ft"
STATION_COL = "nearest_station_district"
MISSING = "__missing__"

#: Frames with at most this many located rows find the nearest station with a NumPy distance
#: matrix (fast on serving-size batches); larger frames use ``geopandas.sjoin_nearest``.
MATRIX_NEAREST_MAX_ROWS = 5_000

SEASON_BY_MONTH: dict[int, str] = {
    12: "Winter", 1: "Winter", 2: "Winter",
    3: "Spring", 4: "Spring", 5: "Spring",
    6: "Summer", 7: "Summer", 8: "Summer",
    9: "Fall", 10: "Fall", 11: "Fall",
}
#: (first hour inclusive, last hour exclusive, label); hours outside all ranges are Night.
DAY_TIME_HOURS: tuple[tuple[int, int, str], ...] = (
    (6, 12, "Morning"), (12, 18, "Afternoon"), (18, 22, "Evening"),
)

CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "iucr", "primary_type", "description", "location_description", "beat", "district",
    "ward", "community_area", "fbi_code", STATION_COL, "season", "day_time",
)
#: How precisely the time was recorded (see the module's docstring), from :func:`time_quality`.
TIME_QUALITY_COLUMNS: tuple[str, ...] = (
    "minute", "day_of_month", "on_the_hour", "on_five_minutes", "at_midnight", "at_noon",
)
NUMERIC_COLUMNS: tuple[str, ...] = (
    "domestic", "hour", "day_of_week", "month", "x_coordinate", "y_coordinate", DIST_COL,
    *TIME_QUALITY_COLUMNS,
)
#: Columns produced by :class:`CrimeEnricher`, in order.
ENRICHED_COLUMNS: tuple[str, ...] = CATEGORICAL_COLUMNS + NUMERIC_COLUMNS


def season_of(month: float | None) -> str | None:
    """Meteorological season of a month number (Dec-Feb Winter ... Sep-Nov Fall)."""
    if is_missing(month):
        return None
    return SEASON_BY_MONTH[int(month)]


def day_time_of(hour: float | None) -> str | None:
    """Morning [6, 12), Afternoon [12, 18), Evening [18, 22), Night otherwise."""
    if is_missing(hour):
        return None
    for start, end, label in DAY_TIME_HOURS:
        if start <= hour < end:
            return label
    return "Night"


def time_quality(hour: Any, minute: Any, day: Any) -> dict[str, Any]:
    """:data:`TIME_QUALITY_COLUMNS` of scalars or NumPy arrays (NaN in, NaN out)."""
    def flag(condition: Any, *parts: Any) -> Any:
        missing = np.isnan(parts[0])
        for part in parts[1:]:
            missing = missing | np.isnan(part)
        return np.where(missing, np.nan, np.asarray(condition, dtype=float))

    with np.errstate(invalid="ignore"):
        values = {
            "minute": minute, "day_of_month": day,
            "on_the_hour": flag(minute == 0, minute),
            "on_five_minutes": flag(np.fmod(minute, 5) == 0, minute),
            "at_midnight": flag((hour == 0) & (minute == 0), hour, minute),
            "at_noon": flag((hour == 12) & (minute == 0), hour, minute),
        }
    if np.ndim(minute) == 0:
        return {k: float(v) for k, v in values.items()}
    return {k: np.asarray(v, dtype=float) for k, v in values.items()}


def _as_frame(X: Any) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    if isinstance(X, Mapping):
        return pd.DataFrame([X])
    return pd.DataFrame(X)


# --------------------------------------------------------------------------------------------
# enrichment
# --------------------------------------------------------------------------------------------
StationTable = pd.DataFrame | Mapping[str, Sequence[Any]]


def plain_station_table(stations: StationTable) -> dict[str, list[Any]]:
    """A station table as ``{column: [values]}`` of plain Python values (missing -> None).

    This is what a serialised :class:`CrimeEnricher` keeps: skops cannot save DataFrames.
    """
    frame = pd.DataFrame(stations).astype(object)
    return {str(col): [None if is_missing(v) else (v.item() if isinstance(v, np.generic) else v)
                       for v in frame[col].tolist()]
            for col in frame.columns}


def prepare_stations(stations: StationTable | None) -> pd.DataFrame:
    """District stations (``district``, ``x``, ``y`` in EPSG:3435) from a station table
    (a DataFrame or ``{column: [values]}``).

    Rows whose district is not a number (the ``Headquarters`` row) are not district stations.
    Stations without x/y but with lat/lon are projected.
    """
    if isinstance(stations, Mapping):
        stations = pd.DataFrame(stations)
    if stations is None or len(stations) == 0:
        raise ValueError("a non-empty police station table is required")
    out = []
    for rec in stations.to_dict("records"):
        district = integer_text(rec.get("district")) if not is_missing(rec.get("district")) \
            else None
        if district is None:
            continue
        x, y = coordinates(rec)
        if math.isnan(x):
            continue
        out.append((district, x, y))
    if not out:
        raise ValueError("no district station with coordinates in the station table")
    out.sort(key=lambda r: int(r[0]))
    return pd.DataFrame(out, columns=["district", "x", "y"])


class CrimeEnricher(TransformerMixin, BaseEstimator):
    """Raw Socrata records -> typed, enriched columns (:data:`ENRICHED_COLUMNS`).

    ``stations`` is the police station table (``portal.STATION_FIELDS``), a DataFrame or
    ``{column: [values]}``; ``fit`` keeps what ``transform`` needs as plain arrays
    (``station_district_``, ``station_x_``, ``station_y_``), so a fitted enricher needs no
    external data. Serialised copies (pickle, joblib, skops) hold the table as
    ``{column: [values]}`` (see :meth:`__getstate__`), which skops can save and which still
    clones and refits. Extra record fields are ignored; rows without usable coordinates are
    kept with NaN distance and no nearest station.
    """

    def __init__(self, stations: StationTable | None = None) -> None:
        self.stations = stations

    def __getstate__(self) -> dict[str, Any]:
        """The state to serialise, with a DataFrame station table as plain data."""
        state = super().__getstate__()
        if isinstance(state.get("stations"), pd.DataFrame):
            state = {**state, "stations": plain_station_table(state["stations"])}
        return state

    def fit(self, X: Any = None, y: Any = None) -> CrimeEnricher:
        table = prepare_stations(self.stations)
        self.station_district_ = table["district"].tolist()
        self.station_x_ = table["x"].to_numpy(dtype=float)
        self.station_y_ = table["y"].to_numpy(dtype=float)
        self.n_features_in_ = len(MODEL_FIELDS)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(ENRICHED_COLUMNS, dtype=object)

    def report(self) -> dict[str, Any]:
        """What the fit found (for the stage's JSON report)."""
        check_is_fitted(self, "station_x_")
        return {"stations": len(self.station_district_)}

    # -- batch --------------------------------------------------------------------------------
    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "station_x_")
        df = _as_frame(X)
        out: dict[str, Any] = {}
        for name, func in CATEGORICAL_NORMALIZERS.items():
            out[name] = map_unique(column(df, name), func)
        when = calendar(df)
        hour, dow, month = when["hour"], when["day_of_week"], when["month"]
        out["season"] = map_unique(month, season_of)
        out["day_time"] = map_unique(hour, day_time_of)
        domestic = map_unique(column(df, "domestic"), to_bool).astype(float)

        x, y = frame_coordinates(df)
        dist, station = self._nearest(x, y)
        out[STATION_COL] = station
        numeric = {"domestic": domestic, "hour": hour, "day_of_week": dow, "month": month,
                   "x_coordinate": x, "y_coordinate": y, DIST_COL: dist,
                   **time_quality(hour, when["minute"], when["day"])}
        return pd.DataFrame(
            {c: (pd.Series(out[c], index=df.index, dtype=object, copy=False) if c in out
                 else pd.Series(numeric[c], index=df.index, dtype=float, copy=False))
             for c in ENRICHED_COLUMNS},
            index=df.index,  # same index everywhere: no alignment
        )

    def _nearest(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (feet) to and district of the nearest station, in the EPSG:3435 plane.

        Up to :data:`MATRIX_NEAREST_MAX_ROWS` located rows use a NumPy distance matrix (the
        serving path: no GeoDataFrame set-up); larger frames (the ETL) use
        ``geopandas.sjoin_nearest``. Both give bitwise-identical distances and stations (tested on
        the real 12-month window). Equidistant stations resolve to the lowest district number.
        """
        n = len(x)
        dist = np.full(n, np.nan)
        station = np.full(n, None, dtype=object)
        valid = np.flatnonzero(~np.isnan(x) & ~np.isnan(y))
        if len(valid) == 0:
            return dist, station
        find = self._nearest_matrix if len(valid) <= MATRIX_NEAREST_MAX_ROWS \
            else self._nearest_sjoin
        dist[valid], best = find(x[valid], y[valid])
        station[valid] = np.asarray(self.station_district_, dtype=object)[best]
        return dist, station

    def _nearest_matrix(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, station index) of located points: the full points x stations matrix.

        ``sqrt(dx*dx + dy*dy)`` is GEOS's point distance; ``argmin`` over the (rounded) distances
        picks the first, i.e. lowest-numbered, of equidistant stations, as ``_nearest_sjoin``.
        """
        dx = x[:, None] - self.station_x_[None, :]
        dy = y[:, None] - self.station_y_[None, :]
        d = np.sqrt(dx * dx + dy * dy)
        best = np.argmin(d, axis=1)
        return d[np.arange(len(x)), best], best

    def _nearest_sjoin(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, station index) of located points with ``geopandas.sjoin_nearest``."""
        points = gpd.GeoDataFrame(
            {"row": np.arange(len(x))}, geometry=gpd.points_from_xy(x, y), crs=CRS_FEET
        )
        stations = gpd.GeoDataFrame(
            {"station": np.arange(len(self.station_x_))},
            geometry=gpd.points_from_xy(self.station_x_, self.station_y_), crs=CRS_FEET,
        )
        joined = gpd.sjoin_nearest(points, stations, how="left", distance_col=DIST_COL)
        # equidistant stations give several rows: keep the lowest station number
        joined = joined.sort_values(["row", "station"], kind="stable")
        joined = joined.drop_duplicates("row", keep="first")
        dist = np.empty(len(x))
        best = np.empty(len(x), dtype=np.intp)
        rows = joined["row"].to_numpy()
        dist[rows] = joined[DIST_COL].to_numpy(dtype=float)
        best[rows] = joined["station"].to_numpy()
        return dist, best

    # -- one record ---------------------------------------------------------------------------
    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Same values as ``transform`` on a one-row frame, without pandas."""
        out: dict[str, Any] = {}
        for name, func in CATEGORICAL_NORMALIZERS.items():
            out[name] = func(record.get(name))
        hour, dow, month, minute, day = parse_when(record.get("date"))
        x, y = coordinates(record)
        if math.isnan(x):
            dist, station = math.nan, None
        else:
            dx = x - self.station_x_
            dy = y - self.station_y_
            d = np.sqrt(dx * dx + dy * dy)  # as _nearest_matrix: same ties, same rounding
            best = int(np.argmin(d))
            dist, station = float(d[best]), self.station_district_[best]
        out[STATION_COL] = station
        out["season"] = season_of(month)
        out["day_time"] = day_time_of(hour)
        out["domestic"] = to_bool(record.get("domestic"))
        out["hour"], out["day_of_week"], out["month"] = hour, dow, month
        out["x_coordinate"], out["y_coordinate"], out[DIST_COL] = x, y, dist
        out.update(time_quality(hour, minute, day))
        return {c: out[c] for c in ENRICHED_COLUMNS}


# --------------------------------------------------------------------------------------------
# outliers + log transform + imputation
# --------------------------------------------------------------------------------------------
def _numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns
            if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


class OutlierHandler(TransformerMixin, BaseEstimator):
    """Log1p of skewed columns, Tukey-fence clipping, median imputation (all fitted on train).

    For each numeric column: ``log1p`` if listed in ``log_columns`` (output renamed
    ``log1p_<col>``), then clipping to ``[Q1 - k*IQR, Q3 + k*IQR]`` if listed in
    ``clip_columns``, then missing values replaced by the train median. A ``<col>_missing``
    0/1 indicator is added for ``indicator_columns``. Rows are never dropped; non-numeric
    columns pass through unchanged.
    """

    def __init__(self, log_columns: Sequence[str] = (DIST_COL,),
                 clip_columns: Sequence[str] = (DIST_COL, "x_coordinate", "y_coordinate"),
                 indicator_columns: Sequence[str] = (DIST_COL,), iqr_k: float = 1.5) -> None:
        self.log_columns = log_columns
        self.clip_columns = clip_columns
        self.indicator_columns = indicator_columns
        self.iqr_k = iqr_k

    def _log(self, col: str, values: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(values, 0.0)) if col in self.log_columns else values

    def fit(self, X: pd.DataFrame, y: Any = None) -> OutlierHandler:
        df = _as_frame(X)
        self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.n_features_in_ = len(df.columns)
        self.numeric_columns_ = _numeric_columns(df)
        self.bounds_: dict[str, tuple[float, float]] = {}
        self.medians_: dict[str, float] = {}
        self.n_clipped_: dict[str, int] = {}
        for col in self.numeric_columns_:
            values = self._log(col, df[col].to_numpy(dtype=float))
            if col in self.clip_columns and not np.isnan(values).all():
                q1, q3 = np.nanquantile(values, [0.25, 0.75])
                lo, hi = q1 - self.iqr_k * (q3 - q1), q3 + self.iqr_k * (q3 - q1)
                self.bounds_[col] = (float(lo), float(hi))
                self.n_clipped_[col] = int(((values < lo) | (values > hi)).sum())
                values = np.clip(values, lo, hi)
            median = float(np.nanmedian(values)) if not np.isnan(values).all() else 0.0
            self.medians_[col] = median
        self.indicators_ = [c for c in self.indicator_columns if c in self.numeric_columns_]
        return self

    def _name(self, col: str) -> str:
        return f"log1p_{col}" if col in self.log_columns and col in self.numeric_columns_ \
            else col

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "medians_")
        names = [self._name(c) for c in self.feature_names_in_]
        names += [f"{c}_missing" for c in self.indicators_]
        return np.asarray(names, dtype=object)

    def report(self) -> dict[str, Any]:
        """What the fit found (for the stage's JSON report)."""
        check_is_fitted(self, "medians_")
        return {"bounds": self.bounds_, "medians": self.medians_,
                "clipped_train_rows": self.n_clipped_}

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "medians_")
        df = _as_frame(X)
        out: dict[str, Any] = {}
        missing: dict[str, np.ndarray] = {}
        for col in self.feature_names_in_:
            if col not in self.medians_:
                out[col] = df[col]
                continue
            raw = df[col].to_numpy(dtype=float)
            missing[col] = np.isnan(raw)
            values = self._log(col, raw)
            if col in self.bounds_:
                values = np.clip(values, *self.bounds_[col])
            out[self._name(col)] = pd.Series(
                np.where(np.isnan(values), self.medians_[col], values), index=df.index)
        for col in self.indicators_:
            out[f"{col}_missing"] = pd.Series(missing[col].astype(float), index=df.index)
        return pd.DataFrame(out, index=df.index)

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        check_is_fitted(self, "medians_")
        out: dict[str, Any] = {}
        for col in self.feature_names_in_:
            value = record.get(col)
            if col not in self.medians_:
                out[col] = value
                continue
            arr = np.array([to_float(value)], dtype=float)
            arr = self._log(col, arr)
            if col in self.bounds_:
                arr = np.clip(arr, *self.bounds_[col])
            v = float(arr[0])
            out[self._name(col)] = self.medians_[col] if math.isnan(v) else v
        for col in self.indicators_:
            out[f"{col}_missing"] = 1.0 if math.isnan(to_float(record.get(col))) else 0.0
        return out


# --------------------------------------------------------------------------------------------
# categorical encoding
# --------------------------------------------------------------------------------------------
def _categories(values: Any) -> np.ndarray:
    """Object array of strings; missing values become :data:`MISSING`."""
    arr = np.asarray(values, dtype=object).copy()
    mask = pd.isna(arr)
    arr[mask] = MISSING
    if not mask.all():
        arr[~mask] = [v if isinstance(v, str) else str(v) for v in arr[~mask]]
    return arr


def _category(value: Any) -> str:
    """One value as :func:`_categories` maps it (None/NaN -> :data:`MISSING`)."""
    if value is None or value is pd.NA or value is pd.NaT or (
            isinstance(value, float | np.floating) and math.isnan(value)):
        return MISSING
    return value if isinstance(value, str) else str(value)


class CrimeEncoder(TransformerMixin, BaseEstimator):
    """One-hot (low cardinality), frequency and target encoding (high cardinality).

    * ``onehot_columns``: one 0/1 column per train category (``season_Winter``); unseen
      categories give all zeros.
    * ``frequency_columns``: share of train rows with that category (``iucr_freq``); unseen -> 0.
    * every other non-numeric column: scikit-learn ``TargetEncoder`` (binary target, smoothed,
      cross-fitted during ``fit_transform``; ``<col>_te``); unseen -> the train arrest rate.

    Missing categories are a category of their own. Numeric columns pass through first.
    """

    def __init__(self, onehot_columns: Sequence[str] = ("season", "day_time"),
                 frequency_columns: Sequence[str] = ("iucr", "location_description", "beat"),
                 cv: int = 5, random_state: int = 0) -> None:
        self.onehot_columns = onehot_columns
        self.frequency_columns = frequency_columns
        self.cv = cv
        self.random_state = random_state

    def _fit(self, X: Any, y: Any) -> pd.DataFrame:
        df = _as_frame(X)
        if y is None:
            raise ValueError("CrimeEncoder needs the target (arrest) to fit")
        target = np.asarray([to_bool(v) for v in np.asarray(y, dtype=object)], dtype=float)
        if np.isnan(target).any():
            raise ValueError("the target contains missing or non-boolean values")
        self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.n_features_in_ = len(df.columns)
        self.numeric_columns_ = _numeric_columns(df)
        categorical = [c for c in df.columns if c not in self.numeric_columns_]
        self.onehot_: dict[str, list[str]] = {}
        self.frequency_: dict[str, dict[str, float]] = {}
        for col in categorical:
            if col in self.onehot_columns:
                self.onehot_[col] = sorted(set(_categories(df[col]).tolist()))
        n = max(len(df), 1)
        for col in categorical:
            if col in self.frequency_columns:
                values, counts = np.unique(_categories(df[col]).astype(str), return_counts=True)
                self.frequency_[col] = {str(v): float(c) / n
                                        for v, c in zip(values, counts, strict=True)}
        self.target_columns_ = [c for c in categorical if c not in self.onehot_columns]
        self.target_encoder_ = None
        self.target_maps_: dict[str, dict[str, float]] = {}
        self._target = target.astype(int)
        return df

    def _finish_target(self) -> None:
        te = self.target_encoder_
        self.target_mean_ = float(te.target_mean_)
        for i, col in enumerate(self.target_columns_):
            self.target_maps_[col] = {
                str(cat): float(enc)
                for cat, enc in zip(te.categories_[i], te.encodings_[i], strict=True)
            }

    def _te_matrix(self, df: pd.DataFrame) -> np.ndarray:
        return np.column_stack([_categories(df[c]) for c in self.target_columns_])

    def _new_te(self) -> TargetEncoder:
        folds = StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        return TargetEncoder(target_type="binary", smooth="auto", cv=folds)

    def fit(self, X: Any, y: Any = None) -> CrimeEncoder:
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> pd.DataFrame:
        df = self._fit(X, y)
        te_values = None
        if self.target_columns_:
            self.target_encoder_ = self._new_te()
            te_values = self.target_encoder_.fit_transform(self._te_matrix(df), self._target)
            self._finish_target()
        del self._target
        return self._assemble(df, te_values)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "onehot_")
        names = list(self.numeric_columns_)
        for col, cats in self.onehot_.items():
            names += [f"{col}_{cat}" for cat in cats]
        names += [f"{col}_freq" for col in self.frequency_]
        names += [f"{col}_te" for col in self.target_columns_]
        return np.asarray(names, dtype=object)

    def report(self) -> dict[str, Any]:
        """What the fit found (for the stage's JSON report)."""
        check_is_fitted(self, "onehot_")
        return {"onehot": self.onehot_, "frequency_columns": list(self.frequency_),
                "target_columns": self.target_columns_,
                "categories": {c: len(m) for c, m in self.target_maps_.items()},
                "train_arrest_rate": self.target_mean_}

    def _assemble(self, df: pd.DataFrame, te_values: np.ndarray | None) -> pd.DataFrame:
        out: dict[str, Any] = {c: df[c].to_numpy(dtype=float) for c in self.numeric_columns_}
        for col, cats in self.onehot_.items():
            values = _categories(df[col])
            for cat in cats:
                out[f"{col}_{cat}"] = (values == cat).astype(float)
        for col, table in self.frequency_.items():
            values = _categories(df[col])
            out[f"{col}_freq"] = np.fromiter((table.get(v, 0.0) for v in values), dtype=float,
                                             count=len(values))
        if te_values is not None:
            for i, col in enumerate(self.target_columns_):
                out[f"{col}_te"] = np.asarray(te_values[:, i], dtype=float)
        return pd.DataFrame(out, index=df.index)

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "onehot_")
        df = _as_frame(X)
        te_values = None
        if self.target_columns_:
            te_values = self.target_encoder_.transform(self._te_matrix(df))
        return self._assemble(df, te_values)

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        check_is_fitted(self, "onehot_")
        out: dict[str, Any] = {c: to_float(record.get(c)) for c in self.numeric_columns_}
        for col, cats in self.onehot_.items():
            value = _category(record.get(col))
            for cat in cats:
                out[f"{col}_{cat}"] = 1.0 if value == cat else 0.0
        for col, table in self.frequency_.items():
            out[f"{col}_freq"] = table.get(_category(record.get(col)), 0.0)
        for col in self.target_columns_:
            out[f"{col}_te"] = self.target_maps_[col].get(_category(record.get(col)),
                                                          self.target_mean_)
        return out


# --------------------------------------------------------------------------------------------
# scaling, balancing, selection
# --------------------------------------------------------------------------------------------
class RecordScaler(StandardScaler):
    """``StandardScaler`` with pandas output and a per-record path."""

    def __init__(self, *, copy: bool = True, with_mean: bool = True,
                 with_std: bool = True) -> None:
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.set_output(transform="pandas")

    def report(self) -> dict[str, Any]:
        """What the fit found (for the stage's JSON report)."""
        check_is_fitted(self, "scale_")
        names = self.feature_names_in_.tolist()
        return {"mean": dict(zip(names, self.mean_.tolist(), strict=True)),
                "scale": dict(zip(names, self.scale_.tolist(), strict=True))}

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        check_is_fitted(self, "scale_")
        names = self.feature_names_in_
        values = np.array([to_float(record.get(n)) for n in names], dtype=float)
        if self.with_mean:
            values -= self.mean_
        if self.with_std:
            values /= self.scale_
        return dict(zip(names.tolist(), values.tolist(), strict=True))


class SmoteUnderSampler(BaseEstimator):
    """SMOTE up to ``smote_ratio`` (minority/majority), then random under-sampling of the
    majority down to ``final_ratio``. A sampler: used on training data only (imblearn
    pipelines skip it at predict time).

    SMOTE interpolates between neighbours, which turns discrete columns (hour, one-hot flags)
    into fractions that no real record has - a give-away of synthetic rows. Columns with at
    most ``snap_max_levels`` distinct values are therefore snapped to the nearest value seen
    in the input (``None`` disables this).
    """

    def __init__(self, smote_ratio: float = 0.5, final_ratio: float = 1.0, k_neighbors: int = 5,
                 snap_max_levels: int | None = 5000, random_state: int = 0) -> None:
        self.smote_ratio = smote_ratio
        self.final_ratio = final_ratio
        self.k_neighbors = k_neighbors
        self.snap_max_levels = snap_max_levels
        self.random_state = random_state

    def _snap(self, X_in: Any, X_out: Any, n_in: int) -> Any:
        if self.snap_max_levels is None or len(X_out) == n_in:
            return X_out
        is_frame = isinstance(X_out, pd.DataFrame)
        source = np.asarray(X_in, dtype=float)
        values = np.array(X_out, dtype=float, copy=True)
        self.snapped_columns_: list[int] = []
        for j in range(source.shape[1]):
            levels = np.unique(source[:, j][~np.isnan(source[:, j])])
            if len(levels) == 0 or len(levels) > self.snap_max_levels:
                continue
            synth = values[n_in:, j]
            pos = np.clip(np.searchsorted(levels, synth), 1, max(len(levels) - 1, 1))
            lower = levels[pos - 1]
            upper = levels[np.minimum(pos, len(levels) - 1)]
            values[n_in:, j] = np.where(np.abs(synth - lower) <= np.abs(upper - synth),
                                        lower, upper)
            self.snapped_columns_.append(j)
        if is_frame:
            return pd.DataFrame(values, columns=X_out.columns, index=X_out.index)
        return values

    def fit_resample(self, X: Any, y: Any) -> tuple[Any, Any]:
        if not 0 < self.smote_ratio <= self.final_ratio <= 1:
            raise ValueError("need 0 < smote_ratio <= final_ratio <= 1")
        counts = pd.Series(np.asarray(y)).value_counts()
        if len(counts) != 2:
            raise ValueError("balancing needs exactly two classes")
        self.counts_before_ = {str(k): int(v) for k, v in counts.sort_index().items()}
        ratio = counts.min() / counts.max()
        if ratio < self.smote_ratio:
            smote = SMOTE(sampling_strategy=self.smote_ratio, k_neighbors=self.k_neighbors,
                          random_state=self.random_state)
            X_res, y = smote.fit_resample(X, y)  # synthetic rows are appended after X's rows
            X = self._snap(X, X_res, len(X))
            ratio = self.smote_ratio
        if ratio < self.final_ratio:
            under = RandomUnderSampler(sampling_strategy=self.final_ratio,
                                       random_state=self.random_state)
            X, y = under.fit_resample(X, y)
        after = pd.Series(np.asarray(y)).value_counts().sort_index()
        self.counts_after_ = {str(k): int(v) for k, v in after.items()}
        return X, y

    def report(self) -> dict[str, Any]:
        """What the last ``fit_resample`` did (for the stage's JSON report)."""
        if not hasattr(self, "counts_after_"):
            raise NotFittedError("call fit_resample first")
        return {"smote_ratio": self.smote_ratio, "final_ratio": self.final_ratio,
                "counts_before": self.counts_before_, "counts_after": self.counts_after_}


class MutualInfoSelector(TransformerMixin, BaseEstimator):
    """Keep the ``k`` features with the highest mutual information with the target
    (and at least ``min_score``), estimated on at most ``max_samples`` seeded train rows.
    Scores are kept in ``scores_``; the selected features keep their input order."""

    def __init__(self, k: int | None = 20, min_score: float = 0.0, n_neighbors: int = 3,
                 max_samples: int | None = 50_000, random_state: int = 0) -> None:
        self.k = k
        self.min_score = min_score
        self.n_neighbors = n_neighbors
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> MutualInfoSelector:
        df = _as_frame(X)
        target = np.asarray(y)
        self.feature_names_in_ = np.asarray([str(c) for c in df.columns], dtype=object)
        self.n_features_in_ = len(df.columns)
        values = df.to_numpy(dtype=float)
        if self.max_samples is not None and len(values) > self.max_samples:
            rng = np.random.RandomState(self.random_state)
            rows = np.sort(rng.choice(len(values), self.max_samples, replace=False))
            values, target = values[rows], target[rows]
        scores = mutual_info_classif(values, target, discrete_features=False,
                                     n_neighbors=self.n_neighbors,
                                     random_state=self.random_state)
        names = self.feature_names_in_.tolist()
        self.scores_ = {n: float(s) for n, s in zip(names, scores, strict=True)}
        order = sorted(range(len(names)), key=lambda i: (-scores[i], i))
        keep = [i for i in order if scores[i] >= self.min_score]
        if self.k is not None:
            keep = keep[: self.k]
        if not keep:
            keep = order[:1]
        self.selected_ = [names[i] for i in sorted(keep)]
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "selected_")
        return np.asarray(self.selected_, dtype=object)

    def report(self) -> dict[str, Any]:
        """What the fit found (for the stage's JSON report)."""
        check_is_fitted(self, "selected_")
        return {"selected": self.selected_, "k": self.k,
                "scores": {n: round(s, 6)
                           for n, s in sorted(self.scores_.items(), key=lambda kv: -kv[1])}}

    def transform(self, X: Any) -> Any:
        check_is_fitted(self, "selected_")
        if isinstance(X, pd.DataFrame):
            return X[self.selected_]
        index = {n: i for i, n in enumerate(self.feature_names_in_)}
        return np.asarray(X)[:, [index[n] for n in self.selected_]]

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        check_is_fitted(self, "selected_")
        return {n: record[n] for n in self.selected_}


# --------------------------------------------------------------------------------------------
# native categorical codes (training-time step of the native gradient-boosting family)
# --------------------------------------------------------------------------------------------
class CategoryCodes(TransformerMixin, BaseEstimator):
    """Categorical columns -> integer codes for a booster with native categorical splits.

    A gradient booster that splits on categories directly (``HistGradientBoostingClassifier``
    with ``categorical_features``) needs each category as a small non-negative integer: the
    ``max_categories - 1`` most frequent train categories of each column get codes ``0, 1, ...``
    (most frequent first), every other value (rare or unseen) the last code, a missing value
    NaN (the booster's own missing-value branch). ``interactions`` adds one categorical column
    per pair (``iucr*location_description``), coded the same way. Codes depend on train
    frequencies only, never on the target. Numeric columns pass through as floats.
    """

    def __init__(self, max_categories: int = 255,
                 interactions: Sequence[tuple[str, str]] = ()) -> None:
        self.max_categories = max_categories
        self.interactions = interactions

    @staticmethod
    def _pair_name(pair: Sequence[str]) -> str:
        return f"{pair[0]}*{pair[1]}"

    @staticmethod
    def _pair_label(left: str, right: str) -> str:
        """The category of an interaction column: both sides' categories."""
        return f"{left}|{right}"

    def _pair_values(self, df: pd.DataFrame, pair: Sequence[str]) -> np.ndarray:
        left, right = _categories(df[pair[0]]), _categories(df[pair[1]])
        return np.asarray([self._pair_label(a, b) for a, b in zip(left, right, strict=True)],
                          dtype=object)

    def fit(self, X: Any, y: Any = None) -> CategoryCodes:
        if not 2 <= self.max_categories <= 255:
            raise ValueError("max_categories must be within 2..255 (the booster's bin limit)")
        df = _as_frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in df.columns], dtype=object)
        self.n_features_in_ = len(df.columns)
        numeric = set(_numeric_columns(df))
        self.numeric_columns_ = [c for c in self.feature_names_in_ if c in numeric]
        columns = {c: _categories(df[c]) for c in self.feature_names_in_ if c not in numeric}
        for pair in self.interactions:
            columns[self._pair_name(pair)] = self._pair_values(df, pair)
        self.codes_: dict[str, dict[str, int]] = {}
        for col, values in columns.items():
            present = values[values != MISSING]
            names, counts = np.unique(present.astype(str), return_counts=True)
            order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
            kept = order[: self.max_categories - 1]
            self.codes_[col] = {str(names[i]): code for code, i in enumerate(kept)}
        self.categorical_ = list(self.codes_)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "codes_")
        return np.asarray([*self.numeric_columns_, *self.categorical_], dtype=object)

    def report(self) -> dict[str, Any]:
        """What the fit found (logged with the model)."""
        check_is_fitted(self, "codes_")
        return {"categorical": self.categorical_, "numeric": self.numeric_columns_,
                "codes": {c: len(m) for c, m in self.codes_.items()},
                "other_code": self.max_categories - 1}

    def _code(self, col: str, value: str) -> float:
        if value == MISSING:
            return math.nan
        return float(self.codes_[col].get(value, self.max_categories - 1))

    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "codes_")
        df = _as_frame(X)
        out: dict[str, Any] = {c: df[c].to_numpy(dtype=float) for c in self.numeric_columns_}
        pairs = {self._pair_name(p): p for p in self.interactions}
        for col in self.categorical_:
            pair = pairs.get(col)
            if pair is None:
                index, values = pd.factorize(np.asarray(df[col], dtype=object))
                names = [_category(v) for v in values]
            else:  # each distinct (left, right) once, from the two columns' own factorisations
                left, left_values = pd.factorize(np.asarray(df[pair[0]], dtype=object))
                right, right_values = pd.factorize(np.asarray(df[pair[1]], dtype=object))
                width = len(right_values) + 1  # code -1 (missing) -> the last slot
                index, joint = pd.factorize((left % (len(left_values) + 1)) * width
                                            + right % width)
                lefts = [*map(_category, left_values), MISSING]
                rights = [*map(_category, right_values), MISSING]
                names = [self._pair_label(lefts[j // width], rights[j % width]) for j in joint]
            # one look-up per distinct value, not per row; a missing value (factorize's -1: the
            # table's last entry) -> NaN, the booster's missing-value branch
            table = np.array([*(self._code(col, name) for name in names), math.nan])
            out[col] = table[index]
        return pd.DataFrame(out, index=df.index)

    def transform_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        check_is_fitted(self, "codes_")
        out: dict[str, Any] = {c: to_float(record.get(c)) for c in self.numeric_columns_}
        pairs = {self._pair_name(p): p for p in self.interactions}
        for col in self.categorical_:
            pair = pairs.get(col)
            if pair is None:
                value = _category(record.get(col))
            else:
                value = self._pair_label(_category(record.get(pair[0])),
                                         _category(record.get(pair[1])))
            out[col] = self._code(col, value)
        return out
