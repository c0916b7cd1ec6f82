"""OpenAPI error responses shared by the routers."""

from __future__ import annotations

from typing import Any

from chicago_crime.serve.schemas import ErrorBody

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "No champion model is loaded."}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Invalid record: the field is named."}}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Request body over MAX_BODY_BYTES."}}
