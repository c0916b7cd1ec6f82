"""Request and response bodies of the model server (pydantic v2), with OpenAPI examples.

A request record is a raw crime record (:mod:`chicago_crime.record`): the same field names as
the SODA API, numbers as strings or numbers, booleans as JSON booleans or ``"true"``/
``"false"``, floating timestamps (``2018-03-01T13:00:00.000``). :class:`CrimeRecord` declares
one field per :data:`record.MODEL_FIELDS` entry (a test keeps the two equal), requires
:data:`record.MODEL_REQUIRED_FIELDS` and checks coordinates against :data:`record.BOUNDS`, the
box ingestion quarantines by. Values are typed here and normalised (upper case, zero-padded
codes) by the model's own enricher, with the record contract's normalisers. Fields the model
does not read (``id``, ``case_number``, ``block``, ``arrest``, ``location`` ...) are accepted
and ignored, except that the portal ``id`` is kept for the prediction log (``record_id``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)

from chicago_crime import record as R

CHICAGO_TZ = ZoneInfo("America/Chicago")
PORTAL_EXPORT_DATE_FORMAT = "%m/%d/%Y %I:%M:%S %p"
_OPTIONAL = frozenset(R.MODEL_FIELDS) - frozenset(R.MODEL_REQUIRED_FIELDS)
_LAT, _LON = R.BOUNDS["latitude"], R.BOUNDS["longitude"]
_X, _Y = R.BOUNDS["x_coordinate"], R.BOUNDS["y_coordinate"]
_CODE = r"^[0-9A-Za-z]{1,8}$"

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


class CrimeRecord(BaseModel):
    """One crime record with Socrata field names. Only ``date`` and ``primary_type`` are required.

    Missing optional fields (absent, ``null`` or ``""``) reach the model as missing values, which
    the model imputes or encodes as unknown.
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
    iucr: str | None = Field(
        None, max_length=8, pattern=_CODE,
        description="Illinois Uniform Crime Reporting code; digits-only codes are read "
        "zero-padded to 4 characters (486 = 0486).",
        examples=["0486"],
    )
    primary_type: str = Field(
        min_length=1, max_length=100, description="IUCR primary type, e.g. THEFT (any case).",
        examples=["BATTERY"],
    )
    description: str | None = Field(
        None, max_length=200, description="IUCR secondary description.",
        examples=["DOMESTIC BATTERY SIMPLE"],
    )
    location_description: str | None = Field(
        None, max_length=200, description="Kind of place, e.g. STREET.", examples=["APARTMENT"]
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
        None, max_length=8, pattern=_CODE,
        description="FBI crime classification; digits-only codes are read zero-padded to 2 "
        "(6 = 06).",
        examples=["08B"],
    )
    x_coordinate: float | None = Field(
        None, ge=_X[0], le=_X[1], allow_inf_nan=False,
        description=f"X in EPSG:3435 (US feet) inside Chicago {_X}; give with y_coordinate.",
        examples=[1143348],
    )
    y_coordinate: float | None = Field(
        None, ge=_Y[0], le=_Y[1], allow_inf_nan=False,
        description=f"Y in EPSG:3435 (US feet) inside Chicago {_Y}; give with x_coordinate.",
        examples=[1897089],
    )
    latitude: float | None = Field(
        None, ge=_LAT[0], le=_LAT[1], allow_inf_nan=False,
        description=f"WGS84 latitude inside Chicago {_LAT}; give with longitude.",
        examples=[41.873648787],
    )
    longitude: float | None = Field(
        None, ge=_LON[0], le=_LON[1], allow_inf_nan=False,
        description=f"WGS84 longitude inside Chicago {_LON}; give with latitude.",
        examples=[-87.749166581],
    )

    #: The record's portal ``id`` when the request has one (not a model input: the prediction
    #: log keeps it so a later label can be joined to the prediction).
    _record_id: str | None = PrivateAttr(default=None)

    # Three Python hooks per record (not one per field): batches of 10,000 stay fast.
    @model_validator(mode="wrap")
    @classmethod
    def _prepare(cls, data: Any, handler: ModelWrapValidatorHandler[CrimeRecord]) -> Any:
        """Blank optional fields -> missing; numeric codes -> text; the portal ``id`` kept
        aside. (``NaN``/``Infinity`` are not JSON: a non-finite number fails its field's
        validation, naming it.)"""
        if not isinstance(data, dict):
            return handler(data)
        changes: dict[str, Any] = {}
        for name, value in data.items():
            if value.__class__ is str:
                if name in _OPTIONAL and not value.strip():
                    changes[name] = None
            elif value.__class__ is int and name in _TEXT_CODES:
                changes[name] = str(value)
        record = handler({**data, **changes} if changes else data)
        portal_id = data.get("id")
        if portal_id is not None:
            record._record_id = _record_id(portal_id)
        return record

    @field_validator("date", mode="before")
    @classmethod
    def _parse_date(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("date must be a string such as 2018-03-01T13:00:00.000")
        text = value.strip()
        if "/" in text:
            try:
                return datetime.strptime(text, PORTAL_EXPORT_DATE_FORMAT)
            except ValueError:
                pass
        return text  # ISO / SODA forms are parsed by pydantic

    @model_validator(mode="after")
    def _check(self) -> CrimeRecord:
        """Chicago local time; coordinates in pairs."""
        values = self.__dict__  # direct writes: these values are already validated
        date = values["date"]
        if date.tzinfo is not None:
            try:
                values["date"] = date.astimezone(CHICAGO_TZ).replace(tzinfo=None)
            except (OverflowError, OSError) as exc:
                raise ValueError("date is out of range") from exc
        for first, second in R.COORDINATE_PAIRS:
            if (values[first] is None) != (values[second] is None):
                raise ValueError(
                    f"{first} and {second} must be given together (or both left out)")
        return self

    def model_input(self) -> dict[str, Any]:
        """The record as the model reads it (:func:`record.model_record`)."""
        return R.model_record(self.__dict__)

    @property
    def record_id(self) -> str | None:
        """The portal ``id`` the request gave (1-100 characters), else None."""
        return self._record_id


def _record_id(value: Any) -> str | None:
    """A portal id as text: an integer or a short string (anything else is not an id)."""
    if value.__class__ is int:
        return str(value)
    if value.__class__ is str:
        text = value.strip()
        return text if 0 < len(text) <= 100 else None
    return None


#: Text-typed code fields: a JSON number (486) is read as its text ("486").
_TEXT_CODES = frozenset({"iucr", "fbi_code"})


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
    """Period of the data the model was trained on (from the model card)."""

    start: str | None = None
    end: str | None = None


class Refusal(BaseModel):
    """A champion version that is not served, and why."""

    version: str
    reason: str
    refused: bool = Field(description="true: never retried (not skops, untrusted types, failed "
                          "serving check); false: a load error, retried with backoff.")
    attempts: int
    at: datetime


class ModelInfo(BaseModel):
    """The served model version and its model card."""

    name: str
    version: str
    alias: str
    run_id: str | None
    source: str
    threshold: float
    threshold_source: Literal["model card", "default"] = Field(
        description="model card, or default (0.5) for a version registered without one.")
    metrics: dict[str, float]
    features: list[str] | None
    training_window: TrainingWindow
    month: str | None = Field(None, description="The ETL month the version was trained on.")
    predictor: Literal["fast", "pandas"]
    loaded_at: datetime
    version_tags: dict[str, str]
    origin: Literal["registry", "cache"] = "registry"
    champion_refused: Refusal | None = Field(
        None, description="The alias points at a version that is not served (this one is).")


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: a model is loaded. ``degraded`` when it is not (or not known to be) the
    registry's champion: registry unreachable, local copy at start, champion refused."""

    status: Literal["ready", "degraded", "unavailable"]
    model: ModelRef | None = None
    origin: Literal["registry", "cache"] | None = Field(
        None, description="cache: the local copy of the last good champion (at start).")
    champion_refused: Refusal | None = None
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
    """Error response (422s list at most 20 errors in ``detail``; ``error_count`` counts all)."""

    detail: Any
    message: str | None = None
    error_count: int | None = None
