"""The FastAPI application: ``create_app(settings)``; ``uvicorn chicago_crime.serve.app:app``.

The module attribute ``app`` is created on first access (from the environment's settings), so
importing this module has no side effects.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from chicago_crime import __version__
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.monitoring.prediction_log import PredictionLog
from chicago_crime.serve.limits import (
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    allowed_hosts,
    body_limit,
)
from chicago_crime.serve.metrics import ServerMetrics, instrument, multiproc_dir, sweep_dead
from chicago_crime.serve.model_store import ModelStore
from chicago_crime.serve.request_id import HEADER, RequestIdMiddleware
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

Every answer carries an `{HEADER}` header: the client's own (1-128 characters of
`A-Z a-z 0-9 . _ : -`) or a generated one. Each prediction is recorded in the prediction log
with that id.
"""

TAGS = [
    {"name": "predict", "description": "Arrest probabilities for crime records."},
    {"name": "model", "description": "The served model version; forced reload."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
]


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


#: Validation errors listed in a 422 (the rest are counted in ``error_count``).
MAX_ERRORS = 20


def _echo(value: Any) -> Any:
    """A value safe to put in a JSON response: short, UTF-8 encodable, finite; else None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value[:200].encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return value if value.bit_length() <= 63 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return None  # objects and arrays are not echoed


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field (``records[3].latitude``), the first :data:`MAX_ERRORS` of
    them, with a sanitized echo (any JSON input, even ``1e999`` or ``"\\ud800"``, can be
    answered)."""
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    errors = []
    for err in raw[:MAX_ERRORS]:
        loc = tuple(_echo(p) for p in err.get("loc", ()))
        item: dict[str, Any] = {"type": _echo(err.get("type")), "loc": list(loc),
                                "msg": _echo(err.get("msg"))}
        if err.get("type") == "json_invalid":
            reason = _echo(str((err.get("ctx") or {}).get("error", "")))
            item["msg"] = f"invalid JSON at position {loc[-1] if loc else 0}: {reason}"
            item["field"] = "body"
        else:
            item["input"] = _echo(err.get("input"))
            item["field"] = _where(loc)
        errors.append(item)
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:10])
    if len(raw) > 10:
        message += f"; ... {len(raw) - 10} more"
    return JSONResponse(
        {"detail": errors, "message": message, "error_count": len(raw)},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    rid = (request.scope.get("state") or {}).get("request_id")
    log.exception("unhandled error on %s (request %s)", request.url.path, rid, exc_info=exc)
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


_FROM_SETTINGS: Any = object()


#: how often each worker refreshes its state gauges when workers share the metrics
OBSERVE_SECONDS = 5.0


async def _observe(metrics: ServerMetrics, store: ModelStore, prediction_log: Any) -> None:
    while True:
        await asyncio.sleep(OBSERVE_SECONDS)
        metrics.observe(store, prediction_log)


def create_app(settings: Settings | None = None, store: ModelStore | None = None,
               prediction_log: PredictionLog | None = _FROM_SETTINGS) -> FastAPI:
    """The model server. ``store`` defaults to a ``ModelStore`` on ``settings``' registry;
    ``prediction_log`` to the one ``settings`` configure (None: predictions are not logged)."""
    settings = settings or get_settings()
    metrics = ServerMetrics()
    if store is None:
        store = ModelStore(settings)
    if prediction_log is _FROM_SETTINGS:
        prediction_log = PredictionLog.from_settings(settings, observer=metrics)
    metrics.log_enabled.set(1 if prediction_log is not None else 0)
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
        if prediction_log is not None:
            prediction_log.start()  # connects in its own thread: a database down delays nothing
        shared = multiproc_dir()
        if shared is not None:
            sweep_dead(shared)  # a worker killed before us left its live gauges behind
        await run_in_threadpool(store.start)
        metrics.observe(store, prediction_log)
        # with shared metrics, any worker may answer a scrape: each keeps its gauges current
        observer = asyncio.create_task(_observe(metrics, store, prediction_log)) if shared \
            else None
        try:
            yield
        finally:
            if observer is not None:
                observer.cancel()
            store.stop()
            if prediction_log is not None:  # write what is queued (bounded), then stop
                await run_in_threadpool(prediction_log.close)
            metrics.retire()

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
    app.state.prediction_log = prediction_log
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

    # innermost first: body size, then load, then Host; the metrics wrap them all
    app.add_middleware(BodySizeLimitMiddleware,
                       limit=lambda path: body_limit(settings, path))
    app.add_middleware(ConcurrencyLimitMiddleware,
                       max_concurrency=settings.api_max_concurrency,
                       max_queue=settings.api_max_queue,
                       queue_seconds=settings.api_queue_seconds,
                       timeout_seconds=settings.api_request_timeout_seconds)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings))
    instrument(app, metrics)  # counts 400s, 413s, 422s and 503s too
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries X-Request-ID
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        value = create_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
