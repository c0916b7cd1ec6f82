"""Feature pipeline: fitted, picklable transformers from a raw crime record to model features.

Every step follows the scikit-learn API (``fit``/``transform``/``get_feature_names_out``) and
returns pandas DataFrames, so the ETL DAG materialises each stage in the lake and the training
code composes the *same* classes into the served pipeline::

    Pipeline(make_feature_steps(stations, seed)
             + [("balance", make_balancer(seed)), ("select", make_selector(seed)),
                ("clf", model)])                      # imblearn.pipeline.Pipeline

Each non-sampler step also has ``transform_record(record: dict) -> dict``: the same values as
``transform`` on a one-row frame, in plain Python/NumPy (no pandas), for the low-latency
serving path (:func:`transform_record_steps` chains them).

Conventions (documented in ``docs/features.md``):

* coordinates are EPSG:3435 (NAD83 / Illinois East, US survey feet), the CRS of the portal's
  ``x_coordinate``/``y_coordinate``; the distance column is ``dist_to_station_ft`` (feet);
* ``season``: Dec-Feb Winter, Mar-May Spring, Jun-Aug Summer, Sep-Nov Fall;
* ``day_time``: Morning [06:00, 12:00), Afternoon [12:00, 18:00), Evening [18:00, 22:00),
  Night [22:00, 06:00);
* ``day_of_week``: 0 = Monday ... 6 = Sunday.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.under_sampling import RandomUnderSampler
from pyproj import Transformer
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_selection import mutual_info_classif
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler, TargetEncoder
from sklearn.utils.validation import check_is_fitted

TARGET = "arrest"
CRS_FEET = "EPSG:3435"
CRS_LONLAT = "EPSG:4326"
DIST_COL = "dist_to_station_ft"
STATION_COL = "nearest_station_district"
MISSING = "__missing__"

#: Plausible EPSG:3435 bounds of Chicago (feet); coordinates outside are treated as missing.
X_BOUNDS = (1_000_000.0, 1_300_000.0)
Y_BOUNDS = (1_750_000.0, 2_000_000.0)
#: Plausible lat/lon bounds used before projecting lat/lon when x/y are missing.
LAT_BOUNDS = (41.0, 43.0)
LON_BOUNDS = (-89.0, -87.0)
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
NUMERIC_COLUMNS: tuple[str, ...] = (
    "domestic", "hour", "day_of_week", "month", "x_coordinate", "y_coordinate", DIST_COL,
)
#: Columns produced by :class:`CrimeEnricher`, in order.
ENRICHED_COLUMNS: tuple[str, ...] = CATEGORICAL_COLUMNS + NUMERIC_COLUMNS
#: Raw fields the enricher reads (anything else in a record is ignored).
INPUT_FIELDS: tuple[str, ...] = (
    "date", "iucr", "primary_type", "description", "location_description", "domestic", "beat",
    "district", "ward", "community_area", "fbi_code", "x_coordinate", "y_coordinate",
    "latitude", "longitude",
)


# --------------------------------------------------------------------------------------------
# scalar coercions: shared by the batch and the per-record paths, so both agree exactly
# --------------------------------------------------------------------------------------------
def is_missing(value: Any) -> bool:
    """None, NaN, NaT, pd.NA or a blank string."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return False


def to_float(value: Any) -> float:
    """A finite float, or NaN (numbers sent as strings are accepted)."""
    if is_missing(value):
        return math.nan
    try:
        out = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


_TRUE = {"true", "t", "1", "yes", "y", "1.0"}
_FALSE = {"false", "f", "0", "no", "n", "0.0"}


def to_bool(value: Any) -> float:
    """1.0 / 0.0 for boolean-like values (``True``, ``"true"``, ``1`` ...), NaN otherwise."""
    if is_missing(value):
        return math.nan
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    return math.nan


def _integer_text(value: Any) -> str | None:
    """``'0632'``, ``632`` and ``632.0`` -> ``'632'``; None when not an integer."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else None
    text = str(value).strip()
    if text.isdigit():
        return str(int(text))
    try:
        number = float(text)
    except ValueError:
        return None
    return str(int(number)) if math.isfinite(number) and number.is_integer() else None


def norm_code(value: Any) -> str | None:
    """Numeric area codes (beat, district, ward, community area) without leading zeros."""
    if is_missing(value):
        return None
    as_int = _integer_text(value)
    return as_int if as_int is not None else str(value).strip().upper()


def norm_iucr(value: Any) -> str | None:
    """IUCR codes as 4 characters: ``486`` / ``'0486'`` -> ``'0486'``, ``'31a'`` -> ``'031A'``."""
    if is_missing(value):
        return None
    as_int = _integer_text(value)
    text = as_int if as_int is not None else str(value).strip().upper()
    return text.zfill(4)


def norm_fbi(value: Any) -> str | None:
    """FBI codes: ``6`` -> ``'06'``, ``'8a'`` -> ``'08A'``."""
    if is_missing(value):
        return None
    as_int = _integer_text(value)
    if as_int is not None:
        return as_int.zfill(2)
    text = str(value).strip().upper()
    return text.zfill(3) if text[:-1].isdigit() else text


def norm_text(value: Any) -> str | None:
    """Free-text categories: upper case, single spaces."""
    if is_missing(value):
        return None
    return " ".join(str(value).split()).upper()


CATEGORICAL_NORMALIZERS: dict[str, Callable[[Any], str | None]] = {
    "iucr": norm_iucr,
    "primary_type": norm_text,
    "description": norm_text,
    "location_description": norm_text,
    "beat": norm_code,
    "district": norm_code,
    "ward": norm_code,
    "community_area": norm_code,
    "fbi_code": norm_fbi,
}


def parse_when(value: Any) -> tuple[float, float, float]:
    """(hour, day_of_week, month) of a floating timestamp; NaNs when unparseable."""
    nan3 = (math.nan, math.nan, math.nan)
    if is_missing(value):
        return nan3
    moment: datetime | None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, np.datetime64):
        moment = pd.Timestamp(value).to_pydatetime()
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return nan3
    else:
        return nan3
    return float(moment.hour), float(moment.weekday()), float(moment.month)


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


def _in(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


@lru_cache(maxsize=1)
def _lonlat_to_feet() -> Transformer:
    return Transformer.from_crs(CRS_LONLAT, CRS_FEET, always_xy=True)


def _map_unique(values: Any, func: Callable[[Any], Any]) -> np.ndarray:
    """Apply a scalar function once per distinct value (fast on low-cardinality columns)."""
    arr = np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    mapped = [func(u) for u in uniques] + [func(None)]
    table = np.empty(len(mapped), dtype=object)
    table[:] = mapped
    return table[codes]  # code -1 (missing) picks the last entry


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name in df.columns:
        return df[name].to_numpy(dtype=object)
    return np.full(len(df), None, dtype=object)


def _calendar(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hour, day_of_week, month) of the ``date`` column: :func:`parse_when` of each value
    (read from the ``.dt`` accessor when the column is already a datetime column)."""
    if "date" in df.columns and pd.api.types.is_datetime64_any_dtype(df["date"].dtype):
        parts = df["date"].dt
        hour, dow, month = (getattr(parts, a).to_numpy(dtype=float, na_value=np.nan)
                            for a in ("hour", "weekday", "month"))
        return hour, dow, month
    n = len(df)
    when = _map_unique(_column(df, "date"), parse_when)
    return tuple(np.fromiter((w[i] for w in when), dtype=float, count=n)  # type: ignore[return-value]
                 for i in range(3))


#: Value types whose NumPy object -> float cast is Python's ``float()`` (as in :func:`to_float`).
_PLAIN_NUMBER_TYPES = frozenset({str, float, int, bool, type(None), np.float64, np.int64})


def _floats(df: pd.DataFrame, name: str) -> np.ndarray:
    """:func:`to_float` of every value of a column, vectorised when that gives the same result.

    Numeric columns are read as floats; object columns whose values are all plain numbers,
    strings or None are cast by NumPy (which calls ``float()`` and maps None to NaN); anything
    else (blank strings, unparseable text, exotic objects) falls back to :func:`to_float` per
    distinct value. Non-finite values become NaN in every case.
    """
    if name not in df.columns:
        return np.full(len(df), np.nan)
    col = df[name]
    if pd.api.types.is_numeric_dtype(col.dtype):
        out = col.to_numpy(dtype=float, na_value=np.nan)
    else:
        values = col.to_numpy(dtype=object)
        try:
            if not set(map(type, values)) <= _PLAIN_NUMBER_TYPES:
                raise TypeError("not plain values")
            out = values.astype(float)
        except (TypeError, ValueError):
            return _map_unique(values, to_float).astype(float)
    out = np.array(out, dtype=float, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


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
        district = _integer_text(rec.get("district")) if not is_missing(rec.get("district")) \
            else None
        if district is None:
            continue
        x, y = _coordinates(rec)
        if math.isnan(x):
            continue
        out.append((district, x, y))
    if not out:
        raise ValueError("no district station with coordinates in the station table")
    out.sort(key=lambda r: int(r[0]))
    return pd.DataFrame(out, columns=["district", "x", "y"])


def _coordinates(rec: Mapping[str, Any]) -> tuple[float, float]:
    """EPSG:3435 x/y of one record: its own x/y, else projected lat/lon, else NaN."""
    x, y = to_float(rec.get("x_coordinate")), to_float(rec.get("y_coordinate"))
    if not math.isnan(x) and not math.isnan(y) and _in(x, X_BOUNDS) and _in(y, Y_BOUNDS):
        return x, y
    lat, lon = to_float(rec.get("latitude")), to_float(rec.get("longitude"))
    if not math.isnan(lat) and not math.isnan(lon) and _in(lat, LAT_BOUNDS) \
            and _in(lon, LON_BOUNDS):
        px, py = _lonlat_to_feet().transform(lon, lat)
        if _in(px, X_BOUNDS) and _in(py, Y_BOUNDS):
            return float(px), float(py)
    return math.nan, math.nan


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
        self.n_features_in_ = len(INPUT_FIELDS)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(ENRICHED_COLUMNS, dtype=object)

    # -- batch --------------------------------------------------------------------------------
    def transform(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "station_x_")
        df = _as_frame(X)
        out: dict[str, Any] = {}
        for name, func in CATEGORICAL_NORMALIZERS.items():
            out[name] = _map_unique(_column(df, name), func)
        hour, dow, month = _calendar(df)
        out["season"] = _map_unique(month, season_of)
        out["day_time"] = _map_unique(hour, day_time_of)
        domestic = _map_unique(_column(df, "domestic"), to_bool).astype(float)

        x, y = _floats(df, "x_coordinate"), _floats(df, "y_coordinate")
        lat, lon = _floats(df, "latitude"), _floats(df, "longitude")
        x, y = self._project(x, y, lat, lon)
        dist, station = self._nearest(x, y)
        out[STATION_COL] = station
        numeric = {"domestic": domestic, "hour": hour, "day_of_week": dow, "month": month,
                   "x_coordinate": x, "y_coordinate": y, DIST_COL: dist}
        return pd.DataFrame(
            {c: (pd.Series(out[c], index=df.index, dtype=object, copy=False) if c in out
                 else pd.Series(numeric[c], index=df.index, dtype=float, copy=False))
             for c in ENRICHED_COLUMNS},
            index=df.index,  # same index everywhere: no alignment
        )

    @staticmethod
    def _project(x: np.ndarray, y: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
        ok = (x >= X_BOUNDS[0]) & (x <= X_BOUNDS[1]) & (y >= Y_BOUNDS[0]) & (y <= Y_BOUNDS[1])
        x = np.where(ok, x, np.nan)
        y = np.where(ok, y, np.nan)
        need = ~ok & (lat >= LAT_BOUNDS[0]) & (lat <= LAT_BOUNDS[1]) \
            & (lon >= LON_BOUNDS[0]) & (lon <= LON_BOUNDS[1])
        if need.any():
            px, py = _lonlat_to_feet().transform(lon[need], lat[need])
            px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
            inside = (px >= X_BOUNDS[0]) & (px <= X_BOUNDS[1]) \
                & (py >= Y_BOUNDS[0]) & (py <= Y_BOUNDS[1])
            idx = np.flatnonzero(need)
            x[idx] = np.where(inside, px, np.nan)
            y[idx] = np.where(inside, py, np.nan)
        return x, y

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
        hour, dow, month = parse_when(record.get("date"))
        x, y = _coordinates(record)
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
    """``StandardScaler`` (pandas output) with a per-record path."""

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
# factories and the per-record chain
# --------------------------------------------------------------------------------------------
def make_feature_steps(stations: StationTable, seed: int = 0) -> list[tuple[str, Any]]:
    """The standard fitted feature steps: enrich, outliers, encode, scale (all unfitted)."""
    return [
        ("enrich", CrimeEnricher(stations)),
        ("outliers", OutlierHandler()),
        ("encode", CrimeEncoder(random_state=seed)),
        ("scale", RecordScaler().set_output(transform="pandas")),
    ]


def make_balancer(seed: int = 0, smote_ratio: float = 0.5,
                  final_ratio: float = 1.0) -> SmoteUnderSampler:
    """SMOTE to ``smote_ratio`` then under-sampling to ``final_ratio`` (minority/majority)."""
    return SmoteUnderSampler(smote_ratio=smote_ratio, final_ratio=final_ratio, random_state=seed)


def make_selector(seed: int = 0, k: int | None = 20, min_score: float = 0.0,
                  max_samples: int | None = 50_000) -> MutualInfoSelector:
    """Mutual-information feature selector (seeded)."""
    return MutualInfoSelector(k=k, min_score=min_score, max_samples=max_samples,
                              random_state=seed)


def transform_record_steps(steps: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    """Run one raw record through fitted steps with ``transform_record``.

    ``steps`` is a fitted (imblearn/sklearn) ``Pipeline`` or a list of ``(name, step)``.
    Samplers are skipped (they only act during fit); the walk stops at the first step without
    ``transform_record`` (the classifier). Returns the feature dict that step would receive.
    """
    items: Iterable[tuple[str, Any]] = getattr(steps, "steps", steps)
    current: dict[str, Any] = dict(record)
    for _name, step in items:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue
        if not hasattr(step, "transform_record"):
            break
        current = step.transform_record(current)
    return current


def record_vector(features: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """A ``(1, len(names))`` float row of ``features`` in the model's column order."""
    return np.array([[float(features[n]) for n in names]], dtype=float)
