#!/usr/bin/env python3
"""Regenerate ``tests/fixtures/chicago/``: a small, deterministic sample of the real exports.

    python scripts/make_test_fixtures.py [--source ../shared/data/chicago]

The unit tests read this sample so that ``pytest tests/unit`` needs neither ``../shared`` nor
any service; the integration and end-to-end tests and the benchmarks keep reading the full
exports. The layout is the one of ``../shared/data/chicago``: ``crimes/YYYY-MM.csv.gz``,
``police_stations.csv`` and ``iucr_codes.csv`` (the last two copied whole).

Each month keeps a uniform random sample of its rows (``random.Random(SEED)``, one stream
per month, independent of the other months), written in the export's own order and format
(CRLF, minimal quoting, the portal's date format), so the sample reads exactly like an export.
The months of 2018 that the unit tests fit models on keep more rows than the older months of
the 12-month window. The gzip header carries no timestamp or name: the same source gives the
same bytes. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "chicago"
TARGET = REPO / "tests" / "fixtures" / "chicago"
SEED = 20181
#: Rows kept per month: the 12-month window ending 2018-06 (what the unit tests read).
#: 2018-05 + 2018-06 hold more than features.MATRIX_NEAREST_MAX_ROWS (5,000) located rows, so
#: the unit tests see both nearest-station paths on one frame.
ROWS = {**{f"2017-{m:02d}": 400 for m in range(7, 13)},
        **{f"2018-{m:02d}": 2000 for m in range(1, 5)}, "2018-05": 2600, "2018-06": 2600}
WHOLE_FILES = ("police_stations.csv", "iucr_codes.csv")


def sample_month(source: Path, target: Path, month: str, rows: int) -> int:
    """Write ``rows`` rows of one month's export (all of them if it has fewer)."""
    with gzip.open(source, "rt", encoding="utf-8", newline="") as f:
        header, *records = list(csv.reader(f))
    keep = sorted(random.Random(f"{SEED}:{month}").sample(range(len(records)),
                                                          min(rows, len(records))))
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(records[i] for i in keep)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                 compresslevel=9, mtime=0) as gz:
        gz.write(text.getvalue().encode("utf-8"))
    return len(keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder of real exports")
    parser.add_argument("--target", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    for month, rows in ROWS.items():
        kept = sample_month(args.source / "crimes" / f"{month}.csv.gz",
                            args.target / "crimes" / f"{month}.csv.gz", month, rows)
        print(f"crimes/{month}.csv.gz: {kept} rows")
    for name in WHOLE_FILES:
        shutil.copyfile(args.source / name, args.target / name)
        print(name)
    total = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    print(f"{args.target}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
