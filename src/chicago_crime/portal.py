"""The Chicago Data Portal's two datasets: the stations' fields and the CSV export format.

The crime record's fields are the record contract (:mod:`chicago_crime.record`).

The live SODA 2.x API returns snake_case field names, numbers as strings, booleans as JSON
booleans and floating timestamps such as ``2018-03-01T13:00:00.000``; the portal's CSV export
uses title-case headers and ``MM/DD/YYYY hh:mm:ss AM`` dates. This module converts exports
into the API's form (used by the replay server and by tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from chicago_crime.record import BOOLEAN_FIELDS, TIMESTAMP_FIELDS

STATION_FIELDS: tuple[str, ...] = (
    "district", "district_name", "address", "city", "state", "zip", "website", "phone",
    "fax", "tty", "x_coordinate", "y_coordinate", "latitude", "longitude", "location",
)
EXPORT_DATE_FORMAT = "%m/%d/%Y %I:%M:%S %p"
SODA_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.000"


def snake_case(header: str) -> str:
    """``'Location Description'`` -> ``'location_description'``."""
    return "_".join(header.strip().lower().replace("-", " ").split())


def read_export(path: str | Path) -> pd.DataFrame:
    """Read a portal CSV export (optionally gzipped) as strings with snake_case columns.

    Dates are converted to SODA floating timestamps; empty cells stay missing (``NaN``).
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    df.columns = [snake_case(c) for c in df.columns]
    for col in TIMESTAMP_FIELDS:
        if col in df.columns:
            parsed = pd.to_datetime(df[col], format=EXPORT_DATE_FORMAT, errors="coerce")
            df[col] = parsed.dt.strftime(SODA_DATE_FORMAT).where(parsed.notna())
    if "date" in df.columns and "year" not in df.columns and "id" in df.columns:
        df["year"] = df["date"].str.slice(0, 4)
    return df


def crimes_export_path(folder: str | Path, month: str) -> Path:
    """Path of one month's export in a folder laid out like ``../shared/data/chicago``."""
    return Path(folder) / "crimes" / f"{month}.csv.gz"


def to_soda_json(df: pd.DataFrame) -> bytes:
    """Rows as a SODA JSON array; missing values omitted, booleans as JSON booleans."""
    if df.empty:
        return b"[]"
    out = df[[c for c in df.columns if not c.startswith("_")]].copy()
    for col in BOOLEAN_FIELDS:
        if col in out.columns:
            out[col] = out[col].map({"true": True, "false": False}).astype(object)
    text = out.to_json(orient="records", force_ascii=False)
    # drop null members: every record starts with a non-null field except in odd data
    text = re.sub(r',"[a-z_:@0-9]+":null', "", text)
    text = re.sub(r'\{"[a-z_:@0-9]+":null,?', "{", text)
    return text.encode("utf-8")
