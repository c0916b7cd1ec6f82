"""The data lake's layout: every object key the platform reads or writes is built here.

``month`` is the run's month ``YYYY-MM`` (the month of the DAG run's data interval start);
``stamp`` is the last day of that month, ``YYYY-MM-DD``, used to name the month's datasets.

Each ETL stage (:mod:`chicago_crime.stages`) writes under one prefix derived from its name:
``2-processed-data/{stamp}/{stage}/`` (``train.parquet``, ``test.parquet``, ``report.json`` and
the fitted ``{stage}.skops``, and last ``manifest.json``, see :mod:`chicago_crime.manifest`);
``enrich`` writes next to the enriched CSV, ``1-enriched-data/crimes_enriched_{stamp}_`` +
``report.json`` / ``enrich.skops`` / ``manifest.json``. ``monitor_model`` writes
``3-monitoring/{month}/`` (:func:`monitoring_prefix`).
"""

from __future__ import annotations

import calendar
from datetime import date, datetime

from chicago_crime import stages

RAW_PREFIX = "0-raw-data/"
MONTHLY_PREFIX = "0-raw-data/monthly-data/"
WINDOW_PREFIX = "0-raw-data/data/"
QUARANTINE_PREFIX = "0-raw-data/quarantine/"
ENRICHED_PREFIX = "1-enriched-data/"
PROCESSED_PREFIX = "2-processed-data/"
MONITORING_PREFIX = "3-monitoring/"
#: Written last by every stage, and the claim of the attempt writing it (see
#: :mod:`chicago_crime.manifest`).
MANIFEST_FILE = "manifest.json"
CLAIM_FILE = "attempt.json"
#: In a monthly partition folder: the portal had no records for that (backfilled) month.
EMPTY_MONTH_FILE = "no_records.json"


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


def empty_month_key(month: str) -> str:
    """Marks a backfilled month for which the portal returned no records (checked, not
    missing)."""
    return f"{MONTHLY_PREFIX}{month}/{EMPTY_MONTH_FILE}"


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


def stage_prefix(month: str, stage: str) -> str:
    """Where ``stage`` writes for ``month`` (a folder, or a file-name prefix for ``enrich``)."""
    stages.get(stage)  # unknown names fail here
    if stage == stages.ENRICH:
        return enriched_key(month).removesuffix(".csv") + "_"
    return f"{processed_prefix(month)}{stage}/"


def stage_key(month: str, stage: str, name: str) -> str:
    """E.g. ``stage_key('2018-06', 'scale', 'train.parquet')``."""
    return stage_prefix(month, stage) + name


def data_key(month: str, stage: str, part: str) -> str:
    """The stage's ``train`` or ``test`` Parquet."""
    return stage_key(month, stage, f"{part}.parquet")


def fitted_key(month: str, stage: str) -> str:
    """The stage's fitted object (skops)."""
    return stage_key(month, stage, stages.get(stage).fitted_file)


def report_key(month: str, stage: str) -> str:
    """The stage's JSON report."""
    return stage_key(month, stage, "report.json")


def manifest_key(month: str, stage: str) -> str:
    """The stage's manifest, written last (:mod:`chicago_crime.manifest`)."""
    return stage_key(month, stage, MANIFEST_FILE)


def monitoring_prefix(month: str) -> str:
    """Where ``monitor_model`` writes a month's assessment (``summary.json``, ``report.html``
    and, last, ``manifest.json``)."""
    return f"{MONITORING_PREFIX}{month}/"
