"""Chicago Data Portal client (SODA 2.x) built on ``sodapy``, with paging and bounded retries.

The base URL comes from ``SOCRATA_BASE_URL`` so a mirror or the local replay server
(:mod:`chicago_crime.devtools.replay`) can stand in for ``https://data.cityofchicago.org``.
sodapy's documented ``session_adapter`` hook mounts a ``requests`` adapter for the URL's scheme
(it is also how plain-HTTP base URLs are served); the adapter carries urllib3's ``Retry``:
timeouts, connection errors, 429 and 5xx are retried up to ``SOCRATA_MAX_ATTEMPTS`` attempts
with exponential backoff (``SOCRATA_BACKOFF_SECONDS``, at most 60 s), honouring the portal's
``Retry-After`` header; other errors are not retried.

Results are DataFrames of strings in the API's form (snake_case columns, floating timestamps
``2018-03-01T13:00:00.000``, booleans as ``"true"``/``"false"``, missing values ``NaN``). The
``location`` object is flattened to the portal export's text form ``"(lat, lon)"``; columns not
in the dataset's field list (e.g. the portal's ``:@computed_region_*`` columns) are dropped.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from sodapy import Socrata
from urllib3.util import Retry

from chicago_crime.config import Settings, get_settings
from chicago_crime.portal import STATION_FIELDS
from chicago_crime.record import CRIME_FIELDS

log = logging.getLogger(__name__)

RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0
SOQL_TIMESTAMP = "%Y-%m-%dT%H:%M:%S"


class SocrataError(RuntimeError):
    """A request to the portal failed for good (after retries, or not retryable)."""

    def __init__(self, message: str, dataset: str, status: int | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.status = status


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    if status is not None:
        return f"HTTP {status}: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {exc}"


def _flatten(value: Any) -> Any:
    """JSON value -> the string form of the portal's CSV export."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # SODA location/point object
        lat, lon = value.get("latitude"), value.get("longitude")
        if lat is None and "coordinates" in value:  # GeoJSON point: [lon, lat]
            lon, lat = value["coordinates"]
        return None if lat is None or lon is None else f"({lat}, {lon})"
    if value is None:
        return None
    return str(value)


def records_to_frame(records: list[dict[str, Any]], fields: tuple[str, ...]) -> pd.DataFrame:
    """SODA JSON records -> DataFrame of strings with exactly ``fields`` as columns."""
    df = pd.DataFrame.from_records(records).reindex(columns=list(fields))
    for col in df.columns:
        if not pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object:
            df[col] = df[col].map(_flatten, na_action="ignore")
    return df.astype("str")


class SocrataClient:
    """Reads the crimes and police-stations datasets from a SODA 2.x endpoint."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings or get_settings()
        parts = urlsplit(s.socrata_base_url.rstrip("/"))
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(
                f"SOCRATA_BASE_URL must be http(s)://host[:port][/path], got "
                f"{s.socrata_base_url!r}"
            )
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        domain = parts.netloc + parts.path
        token = s.socrata_app_token.get_secret_value() if s.socrata_app_token else None
        if not token:
            log.warning(
                "SOCRATA_APP_TOKEN is not set: requests to %s are anonymous and subject to "
                "strict throttling (HTTP 429); set SOCRATA_APP_TOKEN for production use",
                self.base_url,
            )
        retries = Retry(
            total=s.socrata_max_attempts - 1, status_forcelist=sorted(RETRY_STATUSES),
            allowed_methods={"GET"}, backoff_factor=s.socrata_backoff_seconds,
            backoff_max=MAX_BACKOFF_SECONDS, respect_retry_after_header=True,
            raise_on_status=False,  # the last response is returned: sodapy raises for it
        )
        adapter = {"prefix": f"{parts.scheme}://", "adapter": HTTPAdapter(max_retries=retries)}
        self.soda = Socrata(domain, token, session_adapter=adapter,
                            timeout=s.socrata_timeout_seconds)

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.soda.close()

    def __enter__(self) -> SocrataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, dataset: str, **params: Any) -> list[dict[str, Any]]:
        """One SODA request (retried by the session's adapter, see the module doc)."""
        attempts = self.settings.socrata_max_attempts
        try:
            result = self.soda.get(dataset, **params)
        except requests.RequestException as exc:
            status = _status(exc)
            if status is not None and status not in RETRY_STATUSES:
                raise SocrataError(
                    f"Socrata dataset {dataset} at {self.base_url}: request rejected "
                    f"({_describe(exc)}); not retried", dataset, status,
                ) from exc
            raise SocrataError(
                f"Socrata dataset {dataset} at {self.base_url}: request failed after "
                f"{attempts} attempts; last error {_describe(exc)}", dataset, status,
            ) from exc
        if not isinstance(result, list):
            raise SocrataError(
                f"Socrata dataset {dataset}: expected a JSON array, got {type(result).__name__}",
                dataset,
            )
        return result

    def fetch_all(self, dataset: str, order: str, where: str | None = None,
                  ) -> list[dict[str, Any]]:
        """All rows of a query, paging with ``$limit``/``$offset`` until a short page."""
        page = self.settings.socrata_page_size
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            batch = self._get(dataset, where=where, order=order, limit=page, offset=offset)
            rows.extend(batch)
            if len(batch) < page:
                return rows
            offset += page

    # -- datasets -----------------------------------------------------------------------------
    def crimes(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Crimes with ``start <= date < end`` (floating timestamps), ordered by date, id."""
        where = (f"date >= '{start.strftime(SOQL_TIMESTAMP)}' "
                 f"AND date < '{end.strftime(SOQL_TIMESTAMP)}'")
        dataset = self.settings.socrata_crimes_dataset
        records = self.fetch_all(dataset, order="date, id", where=where)
        log.info("Socrata %s: %d crimes in [%s, %s)", dataset, len(records), start, end)
        return records_to_frame(records, CRIME_FIELDS)

    def stations(self) -> pd.DataFrame:
        """All police stations (districts plus the Headquarters row)."""
        dataset = self.settings.socrata_stations_dataset
        records = self.fetch_all(dataset, order=":id")
        log.info("Socrata %s: %d police stations", dataset, len(records))
        return records_to_frame(records, STATION_FIELDS)
