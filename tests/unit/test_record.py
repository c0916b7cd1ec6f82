"""The record contract: one set of fields, one box, one set of normalisers for every reader."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pydantic import ValidationError
from pyproj import Transformer

from chicago_crime import record as R
from chicago_crime.serve.schemas import CrimeRecord
from chicago_crime.validation import validate_crimes


def _portal_row(**changes: str | None) -> dict[str, str | None]:
    """A complete, valid raw record in the SODA API's string form."""
    row: dict[str, str | None] = {
        "id": "11334378", "case_number": "JB289012", "date": "2018-06-01T21:05:00.000",
        "block": "083XX S PAULINA ST", "iucr": "2024", "primary_type": "NARCOTICS",
        "description": "POSS: HEROIN(WHITE)", "location_description": "STREET",
        "arrest": "true", "domestic": "false", "beat": "0614", "district": "006", "ward": "18",
        "community_area": "71", "fbi_code": "18", "x_coordinate": "1166461",
        "y_coordinate": "1849448", "year": "2018", "updated_on": "2018-06-08T15:51:34.000",
        "latitude": "41.742453478", "longitude": "-87.665665679",
        "location": "(41.742453478, -87.665665679)",
    }
    row.update(changes)
    return row


def _ingestion_accepts(**changes: str | None) -> bool:
    _, invalid, _ = validate_crimes(pd.DataFrame([_portal_row(**changes)]), month="2018-06")
    return invalid.empty


def _api_accepts(**changes: str | None) -> bool:
    try:
        CrimeRecord.model_validate({k: v for k, v in _portal_row(**changes).items()
                                    if v is not None})
    except ValidationError:
        return False
    return True


# -- one box ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("longitude", "-87.97"), ("longitude", "-87.49"), ("latitude", "41.59"),
    ("latitude", "42.11"), ("x_coordinate", "1084000"), ("y_coordinate", "1990000"),
])
def test_a_coordinate_ingestion_quarantines_is_rejected_by_the_api(field, value):
    assert _ingestion_accepts() and _api_accepts()
    assert not _ingestion_accepts(**{field: value})
    assert not _api_accepts(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("longitude", "-87.94"), ("latitude", "42.09"), ("x_coordinate", "1214000"),
])
def test_a_coordinate_inside_the_box_passes_both(field, value):
    assert _ingestion_accepts(**{field: value}) and _api_accepts(**{field: value})


@pytest.mark.parametrize("pair", R.COORDINATE_PAIRS)
def test_half_a_coordinate_pair_is_refused_by_both(pair):
    assert not _ingestion_accepts(**{pair[1]: None})
    assert not _api_accepts(**{pair[1]: None})
    assert _ingestion_accepts(**{pair[0]: None, pair[1]: None})
    assert _api_accepts(**{pair[0]: None, pair[1]: None})


def test_the_state_plane_box_holds_the_lat_lon_box():
    to_feet = Transformer.from_crs("EPSG:4326", "EPSG:3435", always_xy=True)
    for lon in R.LONGITUDE_RANGE:
        for lat in R.LATITUDE_RANGE:
            x, y = to_feet.transform(lon, lat)
            assert R.in_range(x, R.X_RANGE) and R.in_range(y, R.Y_RANGE), (lon, lat, x, y)
    assert R.BOUNDS == {"latitude": R.LATITUDE_RANGE, "longitude": R.LONGITUDE_RANGE,
                        "x_coordinate": R.X_RANGE, "y_coordinate": R.Y_RANGE}


# -- one list of fields -------------------------------------------------------------------------
def test_the_api_schema_declares_exactly_the_model_fields():
    assert list(CrimeRecord.model_fields) == list(R.MODEL_FIELDS)
    schema = CrimeRecord.model_json_schema()
    assert schema["required"] == list(R.MODEL_REQUIRED_FIELDS)
    assert set(R.MODEL_FIELDS) <= set(R.CRIME_FIELDS)
    assert set(R.REQUIRED_FIELDS) <= set(R.CRIME_FIELDS)


def test_model_frame_from_frames_and_dicts_is_the_same():
    rows = [_portal_row(), _portal_row(id="2", iucr=None)]
    from_frame = R.model_frame(pd.DataFrame(rows))
    from_dicts = R.model_frame(rows)
    assert list(from_frame.columns) == list(R.MODEL_FIELDS)
    assert from_frame.astype(object).where(from_frame.notna(), None).equals(
        from_dicts.astype(object).where(from_dicts.notna(), None))
    assert list(R.model_frame(pd.DataFrame({"id": ["1"]})).columns) == list(R.MODEL_FIELDS)


def test_model_record_from_the_api_has_nan_for_missing_numbers():
    rec = CrimeRecord.model_validate({"date": "2018-06-01T21:05:00", "primary_type": "THEFT"})
    values = rec.model_input()
    assert list(values) == list(R.MODEL_FIELDS)
    assert math.isnan(values["latitude"]) and values["iucr"] is None


# -- normalisers ----------------------------------------------------------------------------------
def test_scalar_normalisers():
    assert R.norm_iucr(486) == R.norm_iucr("0486") == "0486"
    assert R.norm_iucr("31a") == "031A"
    assert R.norm_code("0632") == R.norm_code(632) == R.norm_code(632.0) == "632"
    assert R.norm_fbi(6) == R.norm_fbi("06") == "06" and R.norm_fbi("8a") == "08A"
    assert R.norm_text("  theft  from  person ") == "THEFT FROM PERSON"
    assert R.to_bool("true") == R.to_bool(True) == 1.0 and R.to_bool("False") == 0.0
    assert math.isnan(R.to_bool("maybe")) and math.isnan(R.to_float("abc"))
    assert R.parse_when("2018-06-04T13:05:00.000") == (13.0, 0.0, 6.0, 5.0, 4.0)
    assert math.isnan(R.parse_when("06/04/2018 01:05:00 PM")[0])
    assert set(R.CATEGORICAL_NORMALIZERS) == {"iucr", "fbi_code", *R.TEXT_FIELDS, *R.CODE_FIELDS}


def test_labels_of_raw_records():
    raw = pd.DataFrame({R.TARGET: ["true", "false", None, "maybe"]})
    got = R.labels(raw)
    assert got[:2].tolist() == [1.0, 0.0] and math.isnan(got[2]) and math.isnan(got[3])
