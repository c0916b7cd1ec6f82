"""Ingestion tasks of the monthly ETL: lake setup, monthly download, rolling 12-month window.

Each function takes and returns small values (month strings, keys, counts, a status) so an
Airflow TaskFlow task can wrap it directly. ``month`` is the run's month ``YYYY-MM`` taken
from the DAG run's data interval (never ``now()``), so every run is independent and
idempotent: a rerun rewrites the same objects with the same bytes.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pandas as pd

from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.layout import (
    EMPTY_MONTH_FILE,
    MONTHLY_PREFIX,
    RAW_PREFIX,
    empty_month_key,
    month_bounds,
    month_range,
    quarantine_key,
    raw_crimes_key,
    raw_stations_key,
    window_key,
)
from chicago_crime.portal import STATION_FIELDS
from chicago_crime.record import CRIME_FIELDS
from chicago_crime.socrata import SocrataClient
from chicago_crime.validation import REASON, validate_crimes

log = logging.getLogger(__name__)

WINDOW_MONTHS = 12
STATUS_OK = "ok"
STATUS_NO_DATA = "no_data"


class IngestError(RuntimeError):
    """A month's data cannot be ingested (too many invalid rows, no stations, ...)."""


# -- CSV I/O (deterministic bytes, strings preserved) -----------------------------------------
def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic CSV: same frame -> same bytes (so reruns keep the same ETag)."""
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def read_raw_csv(lake: Lake, key: str) -> pd.DataFrame:
    """Read a raw CSV back as strings (empty cells -> NaN), exactly as written."""
    return pd.read_csv(io.BytesIO(lake.get_bytes(key)), dtype=str, keep_default_na=False,
                       na_values=[""])


def _put_csv(lake: Lake, key: str, df: pd.DataFrame) -> None:
    lake.put_bytes(key, to_csv_bytes(df), "text/csv")


def _sort_crimes(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by date, then numeric id (a total order: ids are unique)."""
    keys = pd.DataFrame({"date": pd.to_datetime(df["date"], format="ISO8601", errors="coerce"),
                         "id": pd.to_numeric(df["id"], errors="coerce")}, index=df.index)
    order = keys.sort_values(["date", "id"], kind="mergesort").index
    return df.loc[order].reset_index(drop=True)


# -- tasks ------------------------------------------------------------------------------------
def setup_s3(lake: Lake, settings: Settings | None = None) -> dict[str, Any]:
    """Create the bucket if missing and expire only the temporary prefix.

    Raw data (and every dataset a model was trained on) lives outside that prefix, so it is
    never expired.
    """
    s = settings or get_settings()
    prefix = s.etl_temp_prefix
    if not prefix or not prefix.endswith("/"):
        raise ValueError(f"ETL_TEMP_PREFIX must be a folder ending with '/', got {prefix!r}")
    if RAW_PREFIX.startswith(prefix) or prefix.startswith(RAW_PREFIX):
        raise ValueError(f"ETL_TEMP_PREFIX {prefix!r} overlaps raw data {RAW_PREFIX!r}")
    created = lake.ensure_bucket()
    lake.set_expiry(prefix, s.etl_temp_expiry_days)
    log.info("bucket %s ready (created=%s); objects under %s expire after %d days",
             lake.bucket, created, prefix, s.etl_temp_expiry_days)
    return {"bucket": lake.bucket, "created": created, "expiring_prefix": prefix,
            "expiry_days": s.etl_temp_expiry_days}


def crime_months(lake: Lake) -> list[str]:
    """Months that have a raw crimes partition in the lake, oldest first."""
    return _months_with(lake, "crimes.csv")


def empty_months(lake: Lake) -> list[str]:
    """Backfilled months the portal had no records for (marked, so they are not missing)."""
    return _months_with(lake, EMPTY_MONTH_FILE)


def _months_with(lake: Lake, file_name: str) -> list[str]:
    months = []
    for key in lake.iter_keys(MONTHLY_PREFIX):
        month, _, name = key[len(MONTHLY_PREFIX):].partition("/")
        if name == file_name:
            months.append(month)
    return sorted(months)


def kept_months(month: str, settings: Settings | None = None) -> list[str]:
    """The months the ETL keeps complete for a run of ``month``: ``ETL_FIRST_RUN_MONTHS``
    (default 12, the whole window) ending at ``month``."""
    s = settings or get_settings()
    return month_range(month, s.etl_first_run_months)


def missing_months(month: str, lake: Lake, settings: Settings | None = None) -> list[str]:
    """Months of :func:`kept_months` with neither a partition nor a no-records mark."""
    done = set(crime_months(lake)) | set(empty_months(lake))
    return [m for m in kept_months(month, settings) if m not in done]


def months_to_download(month: str, lake: Lake, settings: Settings | None = None) -> list[str]:
    """The run's ``month`` and every month of its window still missing from the lake.

    The first run backfills the whole window; a later run downloads its month, plus any
    month a backfill did not finish (a failed or killed first run is completed by the next
    one, never silently trained on fewer months).
    """
    missing = missing_months(month, lake, settings)
    return sorted({*missing, month})


def _check_invalid(month: str, summary: dict[str, Any], max_fraction: float) -> None:
    if summary["invalid_fraction"] > max_fraction:
        top = sorted(summary["reasons"].items(), key=lambda kv: -kv[1])[:5]
        detail = "; ".join(f"{reason} ({n} rows)" for reason, n in top)
        raise IngestError(
            f"{month}: {summary['invalid']} of {summary['rows']} crime records are invalid "
            f"({summary['invalid_fraction']:.1%} > ETL_MAX_INVALID_FRACTION "
            f"{max_fraction:.1%}): {detail}; nothing was written"
        )


def download_data(month: str, lake: Lake, client: SocrataClient,
                  settings: Settings | None = None) -> dict[str, Any]:
    """Download, validate and store the raw monthly partitions for the run's ``month``.

    Everything is downloaded and validated in memory first; only then are objects written,
    so a failed download or a month with too many invalid rows leaves the lake untouched.
    Months with no records get no partition. Returns ``status`` ``"ok"`` or ``"no_data"``
    (the run's month has no records), the months written and row/invalid counts.
    """
    s = settings or get_settings()
    months = months_to_download(month, lake, s)
    log.info("run %s: downloading %d month(s) %s..%s", month, len(months), months[0],
             months[-1])
    stations = client.stations()
    if stations.empty or stations["district"].isna().all():
        raise IngestError(f"{month}: the police stations dataset returned no stations")
    stations = stations[list(STATION_FIELDS)]

    batches: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]] = {}
    for m in months:
        start, end = month_bounds(m)
        raw = client.crimes(start, end)[list(CRIME_FIELDS)]
        valid, invalid, summary = validate_crimes(raw, month=m)
        log.info("%s: %d records, %d valid, %d invalid %s", m, summary["rows"],
                 summary["valid"], summary["invalid"], summary["reasons"] or "")
        _check_invalid(m, summary, s.etl_max_invalid_fraction)
        batches[m] = (_sort_crimes(valid), _sort_crimes(invalid), summary)

    written, empty, rows, invalid_rows, keys = [], [], {}, {}, []
    for m, (valid, invalid, summary) in batches.items():
        if summary["rows"] == 0:
            log.warning("%s: no crime records; no partition written", m)
            if m != month:  # a backfilled month with no records is checked, not missing
                lake.write_json(empty_month_key(m), {"month": m, "records": 0})
                keys.append(empty_month_key(m))
                empty.append(m)
            continue
        _put_csv(lake, raw_crimes_key(m), valid)
        _put_csv(lake, raw_stations_key(m), stations)
        keys += [raw_crimes_key(m), raw_stations_key(m)]
        if len(invalid):
            _put_csv(lake, quarantine_key(m), invalid[[*CRIME_FIELDS, REASON]])
            keys.append(quarantine_key(m))
            log.warning("%s: %d invalid records quarantined at %s", m, len(invalid),
                        lake.uri(quarantine_key(m)))
        elif lake.exists(quarantine_key(m)):  # a rerun replaces the month, quarantine too
            lake.delete(quarantine_key(m))
        if lake.exists(empty_month_key(m)):
            lake.delete(empty_month_key(m))
        written.append(m)
        rows[m] = int(summary["valid"])
        invalid_rows[m] = int(summary["invalid"])

    status = STATUS_OK if batches[month][2]["rows"] else STATUS_NO_DATA
    if status == STATUS_NO_DATA:
        log.warning("run %s: the portal has no crime records for %s (no data)", month, month)
    return {"month": month, "status": status, "months": written, "empty_months": empty,
            "rows": rows, "invalid": invalid_rows, "stations": len(stations), "keys": keys}


def build_window(month: str, lake: Lake, settings: Settings | None = None) -> dict[str, Any]:
    """Write the rolling 12-month window ending at ``month`` from the monthly partitions.

    Built from the partitions (never by appending to an earlier window), deduplicated by
    ``id`` keeping the latest ``updated_on`` (later partition wins a tie). Fails naming
    every month of :func:`kept_months` that is missing (neither downloaded nor marked as
    having no records): a window is never built silently from fewer months.
    """
    present = set(crime_months(lake))
    months = [m for m in month_range(month, WINDOW_MONTHS) if m in present]
    missing = missing_months(month, lake, settings)
    if missing:
        raise IngestError(f"{month}: the window misses the month(s) {', '.join(missing)} "
                          f"({lake.uri(MONTHLY_PREFIX)}); run download_data again, it "
                          "downloads every missing month")
    if month not in present:
        raise IngestError(f"{month}: no raw crimes partition {raw_crimes_key(month)}; "
                          "run download_data first")
    frames = [read_raw_csv(lake, raw_crimes_key(m)) for m in months]
    df = pd.concat(frames, ignore_index=True)[list(CRIME_FIELDS)]
    updated = pd.to_datetime(df["updated_on"], format="ISO8601", errors="coerce")
    order = updated.sort_values(kind="mergesort", na_position="first").index
    deduped = df.loc[order].drop_duplicates("id", keep="last")
    window = _sort_crimes(deduped)
    key = window_key(month)
    _put_csv(lake, key, window)
    duplicates = len(df) - len(window)
    log.info("window %s: %d rows from %d months (%d duplicates dropped)", lake.uri(key),
             len(window), len(months), duplicates)
    return {"key": key, "rows": len(window), "months": months, "duplicates": duplicates}
