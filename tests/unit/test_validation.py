"""Validation of raw crime records: real data passes, each defect is caught with a reason."""

from __future__ import annotations

import pandas as pd
import pytest

from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.validation import REASON, validate_crimes


@pytest.fixture(scope="module")
def june(shared_data) -> pd.DataFrame:
    return read_export(crimes_export_path(shared_data, "2018-06"))


def test_real_month_is_valid(june):
    valid, invalid, summary = validate_crimes(june, month="2018-06")
    assert summary == {"rows": len(june), "valid": len(june), "invalid": 0,
                       "invalid_fraction": 0.0, "reasons": {}}
    assert invalid.empty and REASON in invalid.columns
    pd.testing.assert_frame_equal(valid, june.reset_index(drop=True))


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("latitude", "36.6", "latitude: outside Chicago"),
    ("longitude", "-80.1", "longitude: outside Chicago"),
    ("latitude", "north", "latitude: outside Chicago"),
    ("arrest", "Y", "arrest: not a known boolean"),
    ("domestic", None, "domestic: missing"),
    ("date", "06/01/2018 03:00:00 PM", "date: not a timestamp"),
    ("date", "2018-07-01T00:00:00.000", "date: outside 2018-06"),
    ("id", "12ab", "id: not an integer"),
    ("case_number", None, "case_number: missing"),
    ("ward", "x", "ward: not a number"),
])
def test_each_defect_is_caught_with_its_reason(june, column, value, reason):
    df = june[june["latitude"].notna()].head(50).reset_index(drop=True)
    df.loc[7, column] = value
    valid, invalid, summary = validate_crimes(df, month="2018-06")
    assert len(valid) == 49 and len(invalid) == 1
    assert invalid.loc[0, "id"] == df.loc[7, "id"] or column == "id"
    assert reason in invalid.loc[0, REASON]
    assert summary["invalid"] == 1 and summary["invalid_fraction"] == pytest.approx(0.02)
    assert any(reason in r for r in summary["reasons"])


def test_missing_coordinates_are_valid_but_half_missing_are_not(june):
    df = june.head(20).reset_index(drop=True)
    df.loc[3, ["latitude", "longitude"]] = None
    df.loc[4, "longitude"] = None
    df.loc[4, "latitude"] = "41.8"
    _, invalid, _ = validate_crimes(df)
    assert invalid["id"].tolist() == [df.loc[4, "id"]]
    assert "only one of them present" in invalid.loc[0, REASON]


def test_duplicates_and_several_reasons(june):
    df = june.head(10).reset_index(drop=True)
    df.loc[5, "id"] = df.loc[2, "id"]
    df.loc[6, ["arrest", "latitude", "longitude"]] = ["maybe", "10.0", "-87.6"]
    valid, invalid, _ = validate_crimes(df)
    assert len(valid) + len(invalid) == 10
    reasons = dict(zip(invalid["id"], invalid[REASON], strict=True))
    assert reasons[df.loc[5, "id"]] == "id: duplicate"
    assert reasons[df.loc[6, "id"]].split("; ") == [
        "arrest: not a known boolean (true/false)", "latitude: outside Chicago (41.6, 42.1)"]


def test_missing_column_invalidates_every_row(june):
    df = june.head(10).drop(columns=["arrest"])
    valid, invalid, summary = validate_crimes(df)
    assert valid.empty and len(invalid) == 10
    assert (invalid[REASON] == "missing column arrest").all()
    assert summary["invalid_fraction"] == 1.0


def test_empty_frame(june):
    valid, invalid, summary = validate_crimes(june.head(0))
    assert valid.empty and invalid.empty and summary["invalid_fraction"] == 0.0
