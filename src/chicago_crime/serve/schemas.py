"""Request and response bodies of the model server (pydantic v2), with OpenAPI examples.

A request record is a crime record as the Chicago Data Portal's SODA API returns it: the same
field names, numbers as strings or numbers, booleans as JSON booleans or ``"true"``/``"false"``,
floating timestamps (``2018-03-01T13:00:00.000``). Fields the model does not read (``id``,
``case_number``, ``block``, ``arrest``, ``location`` ...) are accepted and ignored.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CHICAGO_TZ = ZoneInfo("America/Chicago")
#: Bounding box of the City of Chicago (with a small margin), WGS84 degrees.
LATITUDE_RANGE = (41.60, 42.10)
LONGITUDE_RANGE = (-88.00, -87.50)
#: The same box in the data's own X/Y (EPSG:3435, Illinois East, US feet).
X_RANGE = (1_050_000.0, 1_250_000.0)
Y_RANGE = (1_780_000.0, 1_980_000.0)
PORTAL_EXPORT_DATE_FORMAT = "%m/%d/%Y %I:%M:%S %p"

OPTIONAL_FIELDS: tuple[str, ...] = (
    "description", "location_description", "iucr", "domestic", "beat", "district", "ward",
    "community_area", "fbi_code", "latitude", "longitude", "x_coordinate", "y_coordinate",
)
REQUIRED_FIELDS: tuple[str, ...] = ("date", "primary_type")
NUMERIC_FIELDS: tuple[str, ...] = (
    "beat", "district", "ward", "community_area",
    "latitude", "longitude", "x_coordinate", "y_coordinate",
)

EXAMPLE_RECORD: dict[str, Any] = {
    "id": "11507074",
    "case_number": "JB515687",
    "date": "2018-03-01T13:00:00.000",
    "block": "005XX S LAVERGNE AVE",
    "iucr": "0486",
    "primary_type": "BATTERY",
    "description": "DOMESTIC BATTERY SIMPLE",
    "location_description": "APARTMENT",
    "arrest": False,
    "domestic": True,
    "beat": "1533",
    "district": "015",
    "ward": "29",
    "community_area": "25",
    "fbi_code": "08B",
    "x_coordinate": "1143348",
    "y_coordinate": "1897089",
    "year": "2018",
    "updated_on": "2018-03-08T15:51:34.000",
    "latitude": "41.873648787",
    "longitude": "-87.749166581",
}
MINIMAL_RECORD: dict[str, Any] = {"date": "2018-03-01T13:00:00", "primary_type": "NARCOTICS"}
#: Varied records (complete, typed, partial) used in docs and to self-check the fast path.
SAMPLE_RECORDS: tuple[dict[str, Any], ...] = (
    EXAMPLE_RECORD,
    MINIMAL_RECORD,
    {"date": "2017-07-04T22:30:00.000", "primary_type": "THEFT", "description": "RETAIL THEFT",
     "location_description": "DEPARTMENT STORE", "iucr": "0860", "domestic": False, "beat": 1834,
     "district": 18, "ward": 42, "community_area": 8, "fbi_code": "06",
     "latitude": 41.8923, "longitude": -87.6242},
    {"date": "2017-12-31T03:15:00", "primary_type": "NARCOTICS",
     "description": "POSS: CANNABIS 30GMS OR LESS", "location_description": "STREET",
     "iucr": "1811", "domestic": "false", "beat": "0624", "district": "006",
     "x_coordinate": 1180000, "y_coordinate": 1850000},
    {"date": "2018-06-15T08:00:00.000-05:00", "primary_type": "CRIMINAL DAMAGE",
     "description": "TO VEHICLE", "location_description": None, "iucr": "1320",
     "domestic": None, "beat": "2535", "fbi_code": "14"},
)


def _empty_to_none(value: Any) -> Any:
    """Blank strings and NaN (pandas' missing value, sent as ``NaN`` by some clients) -> None."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _upper(value: str | None) -> str | None:
    return value.upper() if value is not None else None


class CrimeRecord(BaseModel):
    """One crime record with Socrata field names. Only ``date`` and ``primary_type`` are required.

    Missing optional fields (absent, ``null`` or ``""``) reach the model as missing values, which
    the model imputes or encodes as unknown. Text fields are upper-cased as on the portal.
    """

    model_config = ConfigDict(
        extra="ignore",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [EXAMPLE_RECORD, MINIMAL_RECORD]},
    )

    date: datetime = Field(
        description="When the crime occurred, Chicago local time: SODA floating timestamp "
        "(2018-03-01T13:00:00.000), ISO 8601 (with an offset it is converted to Chicago time) "
        "or the portal export form (03/01/2018 01:00:00 PM).",
        examples=["2018-03-01T13:00:00.000"],
    )
    primary_type: str = Field(
        min_length=1, max_length=100, description="IUCR primary type, e.g. THEFT.",
        examples=["BATTERY"],
    )
    description: str | None = Field(
        None, max_length=200, description="IUCR secondary description.",
        examples=["DOMESTIC BATTERY SIMPLE"],
    )
    location_description: str | None = Field(
        None, max_length=200, description="Kind of place, e.g. STREET.", examples=["APARTMENT"]
    )
    iucr: str | None = Field(
        None, max_length=8, pattern=r"^[0-9A-Z]{1,8}$",
        description="Illinois Uniform Crime Reporting code; digits-only codes are zero-padded "
        "to 4 characters (486 -> 0486).",
        examples=["0486"],
    )
    domestic: bool | None = Field(
        None, description="Domestic-related incident: true/false (JSON or string).",
        examples=[True],
    )
    beat: int | None = Field(None, ge=1, le=9999, description="Police beat.", examples=[1533])
    district: int | None = Field(
        None, ge=1, le=99, description="Police district (\"015\" -> 15).", examples=[15]
    )
    ward: int | None = Field(None, ge=1, le=50, description="City council ward.", examples=[29])
    community_area: int | None = Field(
        None, ge=0, le=77, description="Community area (0-77).", examples=[25]
    )
    fbi_code: str | None = Field(
        None, max_length=8, pattern=r"^[0-9A-Z]{1,8}$",
        description="FBI crime classification; digits-only codes are zero-padded to 2 (6 -> 06).",
        examples=["08B"],
    )
    latitude: float | None = Field(
        None, ge=LATITUDE_RANGE[0], le=LATITUDE_RANGE[1], allow_inf_nan=False,
        description=f"WGS84 latitude inside Chicago {LATITUDE_RANGE}; give with longitude.",
        examples=[41.873648787],
    )
    longitude: float | None = Field(
        None, ge=LONGITUDE_RANGE[0], le=LONGITUDE_RANGE[1], allow_inf_nan=False,
        description=f"WGS84 longitude inside Chicago {LONGITUDE_RANGE}; give with latitude.",
        examples=[-87.749166581],
    )
    x_coordinate: float | None = Field(
        None, ge=X_RANGE[0], le=X_RANGE[1], allow_inf_nan=False,
        description="X in EPSG:3435 (US feet) inside Chicago; give with y_coordinate.",
        examples=[1143348],
    )
    y_coordinate: float | None = Field(
        None, ge=Y_RANGE[0], le=Y_RANGE[1], allow_inf_nan=False,
        description="Y in EPSG:3435 (US feet) inside Chicago; give with x_coordinate.",
        examples=[1897089],
    )

    @field_validator(*OPTIONAL_FIELDS, mode="before")
    @classmethod
    def _blank_is_missing(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("date", mode="before")
    @classmethod
    def _parse_date(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("date must be a string such as 2018-03-01T13:00:00.000")
        text = value.strip()
        try:
            return datetime.strptime(text, PORTAL_EXPORT_DATE_FORMAT)
        except ValueError:
            return text  # ISO / SODA forms are parsed by pydantic

    @field_validator("date")
    @classmethod
    def _local_date(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            try:
                value = value.astimezone(CHICAGO_TZ).replace(tzinfo=None)
            except (OverflowError, OSError) as exc:
                raise ValueError("date is out of range") from exc
        return value

    @field_validator("primary_type", "description", "location_description", mode="after")
    @classmethod
    def _upper_text(cls, value: str | None) -> str | None:
        return _upper(value)

    @field_validator("iucr", "fbi_code", mode="before")
    @classmethod
    def _code_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("iucr")
    @classmethod
    def _pad_iucr(cls, value: str | None) -> str | None:
        return value.zfill(4) if value is not None and value.isdigit() else value

    @field_validator("fbi_code")
    @classmethod
    def _pad_fbi(cls, value: str | None) -> str | None:
        return value.zfill(2) if value is not None and value.isdigit() else value

    @model_validator(mode="after")
    def _coordinate_pairs(self) -> CrimeRecord:
        for a, b in (("latitude", "longitude"), ("x_coordinate", "y_coordinate")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"{a} and {b} must be given together (or both left out)")
        return self

    def model_input(self) -> dict[str, Any]:
        """The record as the model reads it: typed values, missing numbers as NaN."""
        out: dict[str, Any] = self.model_dump()
        for name in NUMERIC_FIELDS:
            value = out[name]
            out[name] = math.nan if value is None else float(value)
        return out


class BatchRequest(BaseModel):
    """Several records scored in one request (order preserved)."""

    records: list[CrimeRecord] = Field(min_length=1)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"records": [EXAMPLE_RECORD, MINIMAL_RECORD]}]}
    )


class ModelRef(BaseModel):
    """The registered model version that produced a prediction."""

    name: str = Field(examples=["chicago_arrest"])
    version: str = Field(examples=["3"])
    run_id: str | None = Field(None, examples=["5f0c6d3b2a0e4d7a9b1c2d3e4f5a6b7c"])


class BatchItem(BaseModel):
    """The prediction for one record."""

    arrest_probability: float = Field(
        ge=0, le=1, description="Calibrated probability that the crime ends in an arrest."
    )
    arrest: bool = Field(description="arrest_probability >= threshold.")


class Prediction(BatchItem):
    """The prediction for one record and the model that made it."""

    threshold: float = Field(description="Decision threshold chosen at training time.")
    model: ModelRef

    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "arrest_probability": 0.183, "arrest": False, "threshold": 0.41,
            "model": {"name": "chicago_arrest", "version": "3", "run_id": "5f0c6d3b2a0e4d7a"},
        }]}
    )


class BatchPrediction(BaseModel):
    """Predictions in the order of the request's records."""

    predictions: list[BatchItem]
    threshold: float
    model: ModelRef


class TrainingWindow(BaseModel):
    """Period of the data the model was trained on (as logged by training)."""

    start: str | None = None
    end: str | None = None


class ModelInfo(BaseModel):
    """Metadata of the served model version."""

    name: str
    version: str
    alias: str
    run_id: str | None
    source: str
    threshold: float
    threshold_source: str = Field(description="version tag, run metric, run param or default.")
    metrics: dict[str, float]
    features: list[str] | None
    training_window: TrainingWindow
    predictor: Literal["fast", "pandas"]
    loaded_at: datetime
    version_tags: dict[str, str]


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: a model is loaded. ``degraded`` when the registry cannot be reached."""

    status: Literal["ready", "degraded", "unavailable"]
    model: ModelRef | None = None
    message: str | None = None
    registry_reachable: bool
    last_check: datetime | None = None
    last_error: str | None = None


class ReloadResult(BaseModel):
    """Outcome of ``POST /model/reload``."""

    changed: bool
    model: ModelRef | None
    message: str


class ErrorBody(BaseModel):
    """Error response."""

    detail: Any
    message: str | None = None
