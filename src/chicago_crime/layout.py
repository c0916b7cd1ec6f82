"""The data lake's layout: every object key the platform reads or writes is built here.

``month`` is the run's month ``YYYY-MM`` (the month of the DAG run's data interval start);
``stamp`` is the last day of that month, ``YYYY-MM-DD``, used to name the month's datasets.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime

RAW_PREFIX = "0-raw-data/"
MONTHLY_PREFIX = "0-raw-data/monthly-data/"
WINDOW_PREFIX = "0-raw-data/data/"
QUARANTINE_PREFIX = "0-raw-data/quarantine/"
ENRICHED_PREFIX = "1-enriched-data/"
PROCESSED_PREFIX = "2-processed-data/"
TEMP_PREFIX = "tmp/"

STAGES: tuple[str, ...] = ("split", "outliers", "encoded", "scaled", "balanced", "features")


def month_of(moment: date | datetime | str) -> str:
    """``YYYY-MM`` of a date, datetime or ISO string."""
    if isinstance(moment, str):
        return moment[:7]
    return f"{moment.year:04d}-{moment.month:02d}"


def month_range(end_month: str, months: int) -> list[str]:
    """The ``months`` consecutive months ending at ``end_month`` (inclusive), oldest first."""
    year, mon = (int(p) for p in end_month.split("-"))
    out = []
    for back in range(months - 1, -1, -1):
        total = year * 12 + (mon - 1) - back
        out.append(f"{total // 12:04d}-{total % 12 + 1:02d}")
    return out


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a month as naive datetimes (the portal's floating timestamps)."""
    year, mon = (int(p) for p in month.split("-"))
    start = datetime(year, mon, 1)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1)
    return start, end


def stamp(month: str) -> str:
    """Last day of ``month`` as ``YYYY-MM-DD`` (names the month's datasets)."""
    year, mon = (int(p) for p in month.split("-"))
    return f"{year:04d}-{mon:02d}-{calendar.monthrange(year, mon)[1]:02d}"


def raw_crimes_key(month: str) -> str:
    return f"{MONTHLY_PREFIX}{month}/crimes.csv"


def raw_stations_key(month: str) -> str:
    return f"{MONTHLY_PREFIX}{month}/police_stations.csv"


def window_key(month: str) -> str:
    return f"{WINDOW_PREFIX}crimes_12m_{stamp(month)}.csv"


def quarantine_key(month: str) -> str:
    return f"{QUARANTINE_PREFIX}{month}/crimes_invalid.csv"


def enriched_key(month: str) -> str:
    return f"{ENRICHED_PREFIX}crimes_enriched_{stamp(month)}.csv"


def processed_prefix(month: str) -> str:
    return f"{PROCESSED_PREFIX}{stamp(month)}/"


def stage_key(month: str, stage: str, name: str) -> str:
    """E.g. ``stage_key('2018-06', 'scaled', 'train.parquet')``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return f"{processed_prefix(month)}{stage}/{name}"


# The ML-ready dataset of a month as an Airflow asset (each event's extra names the month).
ML_READY_ASSET_NAME = "chicago_crimes_ml_ready"


def ml_ready_asset_uri(bucket: str) -> str:
    return f"s3://{bucket}/{PROCESSED_PREFIX}"
