"""FastAPI dependencies, each declared once as an ``Annotated`` alias for the routes to use.

``StoreDep``, ``SettingsDep``, ``MetricsDep`` come from the app's state; ``ModelDep`` is the
model version serving this request (read once, so a hot swap cannot change it mid-request);
``BatchDep`` is a batch request within ``MAX_BATCH_RECORDS``; ``require_api_key`` guards
``POST /model/reload``. All are ``async``: none blocks, and FastAPI would otherwise run each
sync dependency of every request in the thread pool.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Body, Depends, Header, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError

from chicago_crime.config import Settings
from chicago_crime.serve.metrics import ServerMetrics
from chicago_crime.serve.model_store import LoadedModel, ModelStore
from chicago_crime.serve.schemas import EXAMPLE_RECORD, MINIMAL_RECORD, BatchRequest


async def _store(request: Request) -> ModelStore:
    return request.app.state.store


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


StoreDep = Annotated[ModelStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[ServerMetrics, Depends(_metrics)]


async def _model(store: StoreDep) -> LoadedModel:
    """The model for this request, or 503 with what to do when none is loaded."""
    loaded = store.current
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=store.status_message())
    return loaded


async def _batch(
    body: Annotated[BatchRequest, Body(openapi_examples={
        "two records": {"summary": "A portal record and a minimal one",
                        "value": {"records": [EXAMPLE_RECORD, MINIMAL_RECORD]}}})],
    settings: SettingsDep,
) -> BatchRequest:
    """The batch, or a 422 naming ``records`` when it holds more than MAX_BATCH_RECORDS."""
    limit = settings.max_batch_records
    if len(body.records) > limit:
        raise RequestValidationError([{
            "type": "too_long", "loc": ("body", "records"), "input": None,
            "msg": f"List should have at most {limit} items (MAX_BATCH_RECORDS), "
                   f"not {len(body.records)}"}])
    return body


ModelDep = Annotated[LoadedModel, Depends(_model)]
BatchDep = Annotated[BatchRequest, Depends(_batch)]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None, Header(description="The server's API_KEY (for POST /model/reload).")
    ] = None,
) -> None:
    """503 when no key is configured, 401 without a key, 403 with a wrong one."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="model reload is disabled: no API_KEY is configured on the server",
        )
    if not x_api_key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="missing X-API-Key header",
            headers={"WWW-Authenticate": "X-API-Key"},
        )
    expected = settings.api_key.get_secret_value().encode()
    if not secrets.compare_digest(x_api_key.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="invalid API key")
