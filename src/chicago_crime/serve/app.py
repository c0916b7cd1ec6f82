"""The FastAPI application: ``create_app(settings)``; ``uvicorn chicago_crime.serve.app:app``.

The module attribute ``app`` is created on first access (from the environment's settings), so
importing this module has no side effects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chicago_crime import __version__
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.serve.metrics import ServerMetrics, instrument
from chicago_crime.serve.model_store import ModelStore
from chicago_crime.serve.routes import ROUTERS

log = logging.getLogger(__name__)

_OPTIONAL = [f for f in R.MODEL_FIELDS if f not in R.MODEL_REQUIRED_FIELDS]
DESCRIPTION = f"""
Predicts whether a reported Chicago crime ends in an **arrest**, with the model version that
holds the champion alias in the MLflow registry (hot-swapped when the alias moves).

**Input**: crime records exactly as the Chicago Data Portal's SODA API returns them
(dataset `ijzp-q8t2`). Required: {", ".join(f"`{f}`" for f in R.MODEL_REQUIRED_FIELDS)}.
Optional: {", ".join(f"`{f}`" for f in _OPTIONAL)}; missing ones are passed to the model as
missing values. Other portal fields (`id`, `case_number`, `block`, `arrest`, `location` ...)
are ignored. Numbers may be strings; booleans JSON booleans or `"true"`/`"false"`;
coordinates must lie inside Chicago (latitude {R.LATITUDE_RANGE}, longitude
{R.LONGITUDE_RANGE}; x {R.X_RANGE}, y {R.Y_RANGE} in EPSG:3435 feet), the box ingestion
validates with.

**Output**: `arrest_probability` (calibrated), `arrest` (probability >= the model's decision
threshold chosen at training time), `threshold` and the model `name`/`version`/`run_id`.
"""

TAGS = [
    {"name": "predict", "description": "Arrest probabilities for crime records."},
    {"name": "model", "description": "The served model version; forced reload."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
]


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request body larger than {self.max_bytes} bytes (MAX_BODY_BYTES)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    exc = self._too_large()
                    response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # FastAPI re-raises HTTPExceptions from the body
            return message

        await self.app(scope, limited_receive, send)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field (``records[3].latitude``) without echoing large inputs."""
    errors = []
    assert isinstance(exc, RequestValidationError)
    for err in exc.errors():
        item = {k: v for k, v in err.items() if k in ("type", "loc", "msg")}
        value = err.get("input")
        if value is None or isinstance(value, (str, int, float, bool)):
            item["input"] = value if not isinstance(value, str) else value[:200]
        item["field"] = _where(err.get("loc", ()))
        errors.append(item)
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:10])
    if len(errors) > 10:
        message += f"; ... {len(errors) - 10} more"
    return JSONResponse(
        jsonable_encoder({"detail": errors, "message": message}),
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Any:
    """The app's OpenAPI schema with this server's batch limit on ``records`` (the routers are
    module-level; the limit is enforced per request by ``deps.BatchDep``)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes,
                                 tags=app.openapi_tags)
            records = schema["components"]["schemas"]["BatchRequest"]["properties"]["records"]
            records["maxItems"] = settings.max_batch_records
            records["description"] = (f"1 to {settings.max_batch_records} records, scored "
                                      "in order.")
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None, store: ModelStore | None = None) -> FastAPI:
    """The model server. ``store`` defaults to a ``ModelStore`` on ``settings``' registry."""
    settings = settings or get_settings()
    metrics = ServerMetrics()
    if store is None:
        store = ModelStore(settings)
    previous_hook = store.on_change

    def on_change(loaded: Any) -> None:
        metrics.model_loaded(loaded.name, loaded.version, loaded.run_id, loaded.predictor.kind)
        if previous_hook is not None:
            previous_hook(loaded)

    store.on_change = on_change
    if store.current is not None:
        on_change(store.current)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)  # one BLAS/OpenMP thread: see docs/api.md (OMP_NUM_THREADS)
        except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
            pass
        await run_in_threadpool(store.start)
        metrics.registry_reachable.set(1 if store.registry_reachable else 0)
        try:
            yield
        finally:
            store.stop()

    app = FastAPI(
        title="Chicago crime arrest prediction",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
    # Swagger UI's assets from the fastapi-offline package: /docs works without internet.
    app.mount("/static", StaticFiles(directory=str(files("fastapi_offline") / "static")),
              name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    instrument(app, metrics)  # outermost: counts 413s and 422s too
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        value = create_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
