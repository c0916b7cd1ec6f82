"""Validation of raw crime records at ingestion (pandera), from the record contract.

Records arrive as strings in the SODA API's form. A record is valid when the fields
:data:`record.REQUIRED_FIELDS` are present, :data:`record.NUMERIC_FIELDS` parse as numbers,
``arrest``/``domestic`` are ``true``/``false``, ``date`` is a floating timestamp (inside the
expected month when one is given), ``id`` is unique, and each coordinate pair is inside
Chicago (:data:`record.BOUNDS`, the boxes the API and the enricher use too) or missing as a
pair. Invalid rows are returned with a ``reason`` column (never dropped silently) so the
caller can quarantine them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd
import pandera.pandas as pa

from chicago_crime.layout import month_bounds
from chicago_crime.record import (
    BOOLEAN_FIELDS,
    BOUNDS,
    COORDINATE_PAIRS,
    CRIME_FIELDS,
    NUMERIC_FIELDS,
    REQUIRED_FIELDS,
)

BOOLEAN_VALUES: frozenset[str] = frozenset({"true", "false"})
#: Text fields the portal may leave out of a record altogether (every other field is a column).
OMITTABLE_FIELDS: frozenset[str] = frozenset({"block", "description", "location_description",
                                              "location"})
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
REASON = "reason"


def _numeric(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def _timestamps(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, format=TIMESTAMP_FORMAT, errors="coerce")


def _in_range(low: float, high: float) -> Any:
    return lambda s: _numeric(s).between(low, high)


def _paired(first: str, second: str) -> pa.Check:
    return pa.Check(lambda df: df[first].isna() == df[second].isna(),
                    name=f"{first}/{second}: only one of them present")


def _field_checks(month: str | None) -> dict[str, list[pa.Check]]:
    checks: dict[str, list[pa.Check]] = {field: [] for field in CRIME_FIELDS}
    checks["id"].append(pa.Check(lambda s: s.str.fullmatch(r"\d+"), name="not an integer"))
    checks["date"].append(pa.Check(lambda s: _timestamps(s).notna(), name="not a timestamp"))
    if month is not None:
        start, end = month_bounds(month)
        checks["date"].append(pa.Check(
            lambda s: _timestamps(s).between(start, end, inclusive="left"),
            name=f"outside {month}"))
    checks["updated_on"].append(pa.Check(lambda s: _timestamps(s).notna(),
                                         name="not a timestamp"))
    for field in BOOLEAN_FIELDS:
        checks[field].append(pa.Check(lambda s: s.isin(BOOLEAN_VALUES),
                                      name="not a known boolean (true/false)"))
    for field in NUMERIC_FIELDS:
        checks[field].append(pa.Check(lambda s: _numeric(s).notna(), name="not a number"))
    for field, box in BOUNDS.items():
        checks[field].append(pa.Check(_in_range(*box), name=f"outside Chicago {box}"))
    return checks


def crimes_schema(month: str | None = None) -> pa.DataFrameSchema:
    """The schema of raw crime records; with ``month``, ``date`` must fall inside it."""
    checks = _field_checks(month)
    columns = {
        field: pa.Column(nullable=field not in REQUIRED_FIELDS,
                         required=field not in OMITTABLE_FIELDS, checks=checks[field],
                         unique=field == "id", report_duplicates="exclude_first")
        for field in CRIME_FIELDS
    }
    return pa.DataFrameSchema(
        columns, checks=[_paired(*pair) for pair in COORDINATE_PAIRS], strict=False,
        coerce=False,
    )


def _reasons(df: pd.DataFrame, failures: pd.DataFrame) -> pd.Series:
    """Row label -> '; '-joined reasons; schema-wide failures apply to every row."""
    per_row: dict[Any, set[str]] = {}
    everywhere: set[str] = set()
    cols = ["schema_context", "column", "check", "failure_case", "index"]
    for context, col, check, case, idx in failures[cols].itertuples(index=False):
        if check == "column_in_dataframe":
            everywhere.add(f"missing column {case}")
            continue
        if check == "not_nullable":
            text = f"{col}: missing"
        elif check == "field_uniqueness":
            text = f"{col}: duplicate"
        elif context == "DataFrameSchema" or not isinstance(col, str):
            text = str(check)
        else:
            text = f"{col}: {check}"
        if idx is None or pd.isna(idx):
            everywhere.add(text)
        else:
            per_row.setdefault(idx, set()).add(text)
    if everywhere:
        for idx in df.index:
            per_row.setdefault(idx, set()).update(everywhere)
    return pd.Series({i: "; ".join(sorted(r)) for i, r in per_row.items()}, dtype="str")


def validate_crimes(df: pd.DataFrame, month: str | None = None,
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Split records into (valid, invalid with a ``reason`` column, summary).

    ``valid`` keeps the input's columns and order; ``invalid`` has the same plus ``reason``;
    ``len(valid) + len(invalid) == len(df)``. The summary holds ``rows``, ``valid``,
    ``invalid``, ``invalid_fraction`` and ``reasons`` (rows per reason).
    """
    df = df.reset_index(drop=True)
    try:
        crimes_schema(month).validate(df, lazy=True)
        reasons = pd.Series(dtype="str")
    except pa.errors.SchemaErrors as exc:
        reasons = _reasons(df, exc.failure_cases)
    bad = df.index.isin(reasons.index)
    valid = df[~bad].reset_index(drop=True)
    invalid = df[bad].copy()
    invalid[REASON] = reasons.reindex(invalid.index)
    invalid = invalid.reset_index(drop=True)
    counts: Counter[str] = Counter()
    for text in invalid[REASON]:
        counts.update(text.split("; "))
    summary = {
        "rows": len(df),
        "valid": len(valid),
        "invalid": len(invalid),
        "invalid_fraction": round(len(invalid) / len(df), 6) if len(df) else 0.0,
        "reasons": dict(sorted(counts.items())),
    }
    return valid, invalid, summary
