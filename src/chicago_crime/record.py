"""The raw crime record: its fields, its bounds and how its values are read, in one place.

A raw record is a crime of the Chicago Data Portal as the SODA API returns it (dataset
``ijzp-q8t2``): snake_case field names, numbers possibly as strings, booleans as JSON booleans
or ``"true"``/``"false"``, floating timestamps such as ``2018-03-01T13:00:00.000``. Everything
that reads one derives from this module:

* ingestion's validation (``validation.crimes_schema``): :data:`CRIME_FIELDS`,
  :data:`REQUIRED_FIELDS`, :data:`NUMERIC_FIELDS`, :data:`BOOLEAN_FIELDS` and the two boxes;
* the API's request schema (``serve.schemas.CrimeRecord``): :data:`MODEL_FIELDS`,
  :data:`MODEL_REQUIRED_FIELDS`, the boxes and the normalisers;
* the feature pipeline (``features.CrimeEnricher``): the normalisers, the boxes;
* training's and prediction's input frame: :func:`model_frame`.

Adding a raw field the model reads = one entry in :data:`MODEL_FIELDS` (and the portal's
:data:`CRIME_FIELDS` if it is new there) and one field in ``serve.schemas.CrimeRecord``.

"Inside Chicago" is one latitude/longitude box and the same box in the portal's own
``x_coordinate``/``y_coordinate`` (EPSG:3435, NAD83 / Illinois East, US survey feet): the
lat/lon box projected and rounded outward to 5,000 ft (a test checks that its corners project
inside). Every record of 2017-01..2018-06 lies inside both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

#: Every field of the portal's crimes dataset, in the dataset's order.
CRIME_FIELDS: tuple[str, ...] = (
    "id", "case_number", "date", "block", "iucr", "primary_type", "description",
    "location_description", "arrest", "domestic", "beat", "district", "ward",
    "community_area", "fbi_code", "x_coordinate", "y_coordinate", "year", "updated_on",
    "latitude", "longitude", "location",
)
#: The label: did the crime end in an arrest.
TARGET = "arrest"
#: Fields a portal record must have to be ingested.
REQUIRED_FIELDS: tuple[str, ...] = (
    "id", "case_number", "date", "iucr", "primary_type", "arrest", "domestic", "fbi_code",
)
#: Fields that hold numbers (sent as numbers or as strings).
NUMERIC_FIELDS: tuple[str, ...] = (
    "beat", "district", "ward", "community_area", "x_coordinate", "y_coordinate", "year",
    "latitude", "longitude",
)
BOOLEAN_FIELDS: tuple[str, ...] = ("arrest", "domestic")
TIMESTAMP_FIELDS: tuple[str, ...] = ("date", "updated_on")

#: The fields the model reads, in the column order of its input frame (others are ignored).
MODEL_FIELDS: tuple[str, ...] = (
    "date", "iucr", "primary_type", "description", "location_description", "domestic", "beat",
    "district", "ward", "community_area", "fbi_code", "x_coordinate", "y_coordinate",
    "latitude", "longitude",
)
#: Fields a record to score must have (the API and the logged model's signature require them).
MODEL_REQUIRED_FIELDS: tuple[str, ...] = ("date", "primary_type")
#: Area codes: numbers without leading zeros (``"015"`` is district 15).
CODE_FIELDS: tuple[str, ...] = ("beat", "district", "ward", "community_area")
#: Free-text categories: upper case, single spaces.
TEXT_FIELDS: tuple[str, ...] = ("primary_type", "description", "location_description")

CRS_LONLAT = "EPSG:4326"
#: NAD83 / Illinois East (US survey feet): the CRS of ``x_coordinate`` / ``y_coordinate``.
CRS_FEET = "EPSG:3435"
#: "Inside Chicago", WGS84 degrees (with a small margin).
LATITUDE_RANGE: tuple[float, float] = (41.6, 42.1)
LONGITUDE_RANGE: tuple[float, float] = (-87.95, -87.5)
#: The same box in EPSG:3435 feet (``x_coordinate`` / ``y_coordinate``).
X_RANGE: tuple[float, float] = (1_085_000.0, 1_215_000.0)
Y_RANGE: tuple[float, float] = (1_795_000.0, 1_985_000.0)
#: Each coordinate field and its box; the two fields of a pair are given together or not at all.
BOUNDS: dict[str, tuple[float, float]] = {
    "latitude": LATITUDE_RANGE, "longitude": LONGITUDE_RANGE,
    "x_coordinate": X_RANGE, "y_coordinate": Y_RANGE,
}
COORDINATE_PAIRS: tuple[tuple[str, str], ...] = (
    ("latitude", "longitude"), ("x_coordinate", "y_coordinate"),
)


def in_range(value: Any, bounds: tuple[float, float]) -> Any:
    """``bounds[0] <= value <= bounds[1]`` for a number or an array (NaN is outside)."""
    return (value >= bounds[0]) & (value <= bounds[1])


# --------------------------------------------------------------------------------------------
# scalar normalisers: every reader of a record value goes through these
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


def integer_text(value: Any) -> str | None:
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
    as_int = integer_text(value)
    return as_int if as_int is not None else str(value).strip().upper()


def norm_iucr(value: Any) -> str | None:
    """IUCR codes as 4 characters: ``486`` / ``'0486'`` -> ``'0486'``, ``'31a'`` -> ``'031A'``."""
    if is_missing(value):
        return None
    as_int = integer_text(value)
    text = as_int if as_int is not None else str(value).strip().upper()
    return text.zfill(4)


def norm_fbi(value: Any) -> str | None:
    """FBI codes: ``6`` -> ``'06'``, ``'8a'`` -> ``'08A'``."""
    if is_missing(value):
        return None
    as_int = integer_text(value)
    if as_int is not None:
        return as_int.zfill(2)
    text = str(value).strip().upper()
    return text.zfill(3) if text[:-1].isdigit() else text


def norm_text(value: Any) -> str | None:
    """Free-text categories: upper case, single spaces."""
    if is_missing(value):
        return None
    return " ".join(str(value).split()).upper()


#: The normaliser of each categorical field the model reads.
CATEGORICAL_NORMALIZERS: dict[str, Callable[[Any], str | None]] = {
    "iucr": norm_iucr,
    **{name: norm_text for name in TEXT_FIELDS},
    **{name: norm_code for name in CODE_FIELDS},
    "fbi_code": norm_fbi,
}


#: What :func:`parse_when` reads from a timestamp, in its order.
WHEN_PARTS: tuple[str, ...] = ("hour", "day_of_week", "month", "minute", "day")


def parse_when(value: Any) -> tuple[float, ...]:
    """:data:`WHEN_PARTS` (hour, day of week, month, minute, day of month) of a floating
    timestamp; NaNs when unparseable."""
    nan_parts = (math.nan,) * len(WHEN_PARTS)
    if is_missing(value):
        return nan_parts
    moment: datetime | None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, np.datetime64):
        moment = pd.Timestamp(value).to_pydatetime()
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return nan_parts
    else:
        return nan_parts
    return (float(moment.hour), float(moment.weekday()), float(moment.month),
            float(moment.minute), float(moment.day))


# --------------------------------------------------------------------------------------------
# the same normalisers over frame columns (vectorised where that gives the same values)
# --------------------------------------------------------------------------------------------
def map_unique(values: Any, func: Callable[[Any], Any]) -> np.ndarray:
    """Apply a scalar function once per distinct value (fast on low-cardinality columns)."""
    arr = np.asarray(values, dtype=object)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    mapped = [func(u) for u in uniques] + [func(None)]
    table = np.empty(len(mapped), dtype=object)
    table[:] = mapped
    return table[codes]  # code -1 (missing) picks the last entry


def column(df: pd.DataFrame, name: str) -> np.ndarray:
    """A column as an object array (all None when the frame lacks it)."""
    if name in df.columns:
        return df[name].to_numpy(dtype=object)
    return np.full(len(df), None, dtype=object)


def calendar(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """:data:`WHEN_PARTS` of the ``date`` column, by name: :func:`parse_when` of each value
    (read from the ``.dt`` accessor when the column is already a datetime column)."""
    if "date" in df.columns and pd.api.types.is_datetime64_any_dtype(df["date"].dtype):
        parts = df["date"].dt
        accessor = {"day_of_week": "weekday"}
        return {name: getattr(parts, accessor.get(name, name)).to_numpy(dtype=float,
                                                                        na_value=np.nan)
                for name in WHEN_PARTS}
    n = len(df)
    when = map_unique(column(df, "date"), parse_when)
    return {name: np.fromiter((w[i] for w in when), dtype=float, count=n)
            for i, name in enumerate(WHEN_PARTS)}


#: Value types whose NumPy object -> float cast is Python's ``float()`` (as in :func:`to_float`).
_PLAIN_NUMBER_TYPES = frozenset({str, float, int, bool, type(None), np.float64, np.int64})


def floats(df: pd.DataFrame, name: str) -> np.ndarray:
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
            return map_unique(values, to_float).astype(float)
    out = np.array(out, dtype=float, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


@lru_cache(maxsize=1)
def _lonlat_to_feet() -> Any:
    from pyproj import Transformer  # only when a record has lat/lon but no usable x/y

    return Transformer.from_crs(CRS_LONLAT, CRS_FEET, always_xy=True)


def coordinates(values: Mapping[str, Any]) -> tuple[float, float]:
    """EPSG:3435 x/y of one record: its own x/y inside the box, else its lat/lon inside the
    box projected, else NaN."""
    x, y = to_float(values.get("x_coordinate")), to_float(values.get("y_coordinate"))
    if in_range(x, X_RANGE) and in_range(y, Y_RANGE):
        return x, y
    lat, lon = to_float(values.get("latitude")), to_float(values.get("longitude"))
    if in_range(lat, LATITUDE_RANGE) and in_range(lon, LONGITUDE_RANGE):
        px, py = _lonlat_to_feet().transform(lon, lat)
        if in_range(px, X_RANGE) and in_range(py, Y_RANGE):
            return float(px), float(py)
    return math.nan, math.nan


def frame_coordinates(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """:func:`coordinates` of every row of a frame (vectorised; same values)."""
    x, y = floats(df, "x_coordinate"), floats(df, "y_coordinate")
    lat, lon = floats(df, "latitude"), floats(df, "longitude")
    ok = in_range(x, X_RANGE) & in_range(y, Y_RANGE)
    x = np.where(ok, x, np.nan)
    y = np.where(ok, y, np.nan)
    need = ~ok & in_range(lat, LATITUDE_RANGE) & in_range(lon, LONGITUDE_RANGE)
    if need.any():
        px, py = _lonlat_to_feet().transform(lon[need], lat[need])
        px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
        inside = in_range(px, X_RANGE) & in_range(py, Y_RANGE)
        idx = np.flatnonzero(need)
        x[idx] = np.where(inside, px, np.nan)
        y[idx] = np.where(inside, py, np.nan)
    return x, y


def labels(raw: pd.DataFrame) -> np.ndarray:
    """The :data:`TARGET` of raw records as 1.0 / 0.0 (NaN when missing or not a boolean)."""
    return map_unique(column(raw, TARGET), to_bool).astype(float)


# --------------------------------------------------------------------------------------------
# the model's input
# --------------------------------------------------------------------------------------------
def model_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """One record as the model reads it: the :data:`MODEL_FIELDS`, missing numbers as NaN."""
    out = {name: values.get(name) for name in MODEL_FIELDS}
    for name in _MODEL_NUMERIC:
        if out[name] is None:
            out[name] = math.nan
    return out


def model_frame(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The frame the model's ``predict_proba`` takes: one column per :data:`MODEL_FIELDS`
    entry, in that order, from raw records (a DataFrame or dicts; other fields dropped)."""
    if isinstance(records, pd.DataFrame):
        return records.reindex(columns=list(MODEL_FIELDS)).reset_index(drop=True)
    rows = records if isinstance(records, Sequence) else list(records)
    # column by column: a quarter cheaper than DataFrame.from_records, same dtypes
    return pd.DataFrame({name: [r.get(name) for r in rows] for name in MODEL_FIELDS},
                        columns=list(MODEL_FIELDS), dtype=None if rows else object)


_MODEL_NUMERIC = tuple(f for f in MODEL_FIELDS if f in NUMERIC_FIELDS)
