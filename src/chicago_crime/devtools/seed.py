"""Seeding a lake from portal CSV exports, as ingestion would have (tests, benchmarks).

Writes the raw 12-month window and the month's station table straight from a folder laid out
like ``../shared/data/chicago``, so ETL stages and training can run without the download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from chicago_crime import layout
from chicago_crime.ingest import to_csv_bytes
from chicago_crime.lake import Lake
from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.record import CRIME_FIELDS


def seed_window_from_exports(lake: Lake, data_dir: str | Path, month: str, months: int = 12,
                             max_rows: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the raw window ending at ``month`` and the station table from portal CSV exports
    (a folder laid out like ``../shared/data/chicago``), as ingestion would have.

    ``max_rows`` keeps a seeded random sample (in the window's order) for small test lakes.
    """
    frames = []
    for m in layout.month_range(month, months):
        path = crimes_export_path(data_dir, m)
        if path.is_file():
            frames.append(read_export(path))
    if not frames:
        raise FileNotFoundError(f"no crime exports for the window ending {month} in {data_dir}")
    window = pd.concat(frames, ignore_index=True)
    window = window[[c for c in CRIME_FIELDS if c in window.columns]]
    if max_rows is not None and len(window) > max_rows:
        window = window.sample(n=max_rows, random_state=seed).sort_index()
    lake.put_bytes(layout.window_key(month), to_csv_bytes(window), "text/csv")
    stations = read_export(Path(data_dir) / "police_stations.csv")
    lake.put_bytes(layout.raw_stations_key(month), to_csv_bytes(stations), "text/csv")
    return {"rows": len(window), "months": len(frames)}
