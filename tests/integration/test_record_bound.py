"""The API's per-record body bound, measured on every record of several full portal exports
(the unit suite's sample is too small to hold the widest records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chicago_crime.portal import crimes_export_path, read_export, to_soda_json
from chicago_crime.serve.limits import RECORD_JSON_BYTES

pytestmark = pytest.mark.integration


def test_the_record_bound_holds_for_real_portal_records(shared_data: Path) -> None:
    largest = 0
    for month in ("2017-01", "2017-07", "2018-06"):
        records = json.loads(to_soda_json(read_export(crimes_export_path(shared_data, month))))
        largest = max(largest, *(len(json.dumps(r, indent=2).encode()) for r in records))
    print(f"largest real record: {largest} bytes indented; bound {RECORD_JSON_BYTES}")
    assert largest < RECORD_JSON_BYTES < 2 * largest
