"""FastAPI dependencies: the model store, the loaded model and the reload API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from chicago_crime.config import Settings
from chicago_crime.serve.metrics import ServerMetrics
from chicago_crime.serve.model_store import LoadedModel, ModelStore


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


def require_model(store: Annotated[ModelStore, Depends(get_store)]) -> LoadedModel:
    """The model for this request (read once, so a hot swap cannot change it mid-request)."""
    loaded = store.current
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=store.status_message())
    return loaded


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
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
