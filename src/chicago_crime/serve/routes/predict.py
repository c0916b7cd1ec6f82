"""HTTP endpoints of the model server (a thin layer over ``ModelStore`` and ``predict``)."""

# No ``from __future__ import annotations``: the batch body class is built per app and FastAPI
# must see the real annotation objects of the closures below.

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import Field, create_model

from chicago_crime.config import Settings
from chicago_crime.serve.deps import (
    get_metrics,
    get_store,
    require_api_key,
    require_model,
)
from chicago_crime.serve.metrics import ServerMetrics
from chicago_crime.serve.model_store import LoadedModel, ModelStore
from chicago_crime.serve.schemas import (
    EXAMPLE_RECORD,
    MINIMAL_RECORD,
    BatchPrediction,
    BatchRequest,
    CrimeRecord,
    ErrorBody,
    Health,
    ModelInfo,
    ModelRef,
    Prediction,
    Readiness,
    ReloadResult,
    TrainingWindow,
)

UNAVAILABLE = {503: {"model": ErrorBody, "description": "No champion model is loaded."}}
INVALID = {422: {"model": ErrorBody, "description": "Invalid record: the field is named."}}
TOO_LARGE = {413: {"model": ErrorBody, "description": "Request body over MAX_BODY_BYTES."}}


#: Fast-path requests up to this many records run on the event loop (sub-millisecond);
#: anything slower goes to the thread pool so the loop keeps answering /health and /ready.
INLINE_MAX_RECORDS = 8


def _score_sync(loaded: LoadedModel, records: list[CrimeRecord]) -> list[dict[str, Any]]:
    """Probabilities and decisions for validated records with one model version."""
    inputs = [r.model_input() for r in records]
    try:
        probabilities = loaded.predictor.predict_proba_records(inputs)
    except (ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"the model could not score the record(s): {str(exc)[:300]}",
        ) from exc
    items = []
    threshold = loaded.threshold
    for p in probabilities:
        if not math.isfinite(p):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail="the model returned no finite probability for this input",
            )
        p = min(1.0, max(0.0, float(p)))
        items.append({"arrest_probability": p, "arrest": p >= threshold})
    return items


async def score(
    loaded: LoadedModel, records: list[CrimeRecord], metrics: ServerMetrics
) -> list[dict[str, Any]]:
    """Score on the event loop when it is quick (fast path), else in the thread pool."""
    if loaded.predictor.kind == "fast" and len(records) <= INLINE_MAX_RECORDS:
        items = _score_sync(loaded, records)
    else:
        items = await run_in_threadpool(_score_sync, loaded, records)
    metrics.record_predictions(loaded.version, [i["arrest"] for i in items])
    return items


def _json(body: dict[str, Any]) -> Response:
    """Responses built directly (already validated data): skips a second pydantic pass."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def build_router(settings: Settings) -> APIRouter:
    """All endpoints; the batch size limit comes from ``settings.max_batch_records``."""
    router = APIRouter()
    max_records = settings.max_batch_records
    batch_model: Any = create_model(
        "BatchRequest",
        __base__=BatchRequest,
        records=(
            list[CrimeRecord],
            Field(min_length=1, max_length=max_records,
                  description=f"1 to {max_records} records, scored in order."),
        ),
    )

    @router.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """Liveness: the process answers (does not check the model)."""
        return Health()

    @router.get(
        "/ready", response_model=Readiness, tags=["operations"],
        responses={503: {"model": Readiness, "description": "No model loaded."}},
    )
    async def ready(store: Annotated[ModelStore, Depends(get_store)]) -> Any:
        """Readiness: a model is loaded. ``degraded`` while the registry is unreachable."""
        loaded = store.current
        if loaded is None:
            state = "unavailable"
        else:
            state = "degraded" if (store.degraded or store.champion_missing) else "ready"
        body = Readiness(
            status=state,
            model=ModelRef(**loaded.ref()) if loaded else None,
            message=store.status_message(),
            registry_reachable=store.registry_reachable,
            last_check=store.last_check,
            last_error=store.last_error,
        )
        code = status.HTTP_200_OK if loaded else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse(body.model_dump(mode="json"), status_code=code)

    @router.get("/model", response_model=ModelInfo, tags=["model"], responses=UNAVAILABLE)
    async def model_info(loaded: Annotated[LoadedModel, Depends(require_model)]) -> ModelInfo:
        """The served version: metrics, threshold, features and training data window."""
        return ModelInfo(
            name=loaded.name,
            version=loaded.version,
            alias="champion",
            run_id=loaded.run_id,
            source=loaded.source,
            threshold=loaded.threshold,
            threshold_source=loaded.threshold_source,
            metrics={k: v for k, v in loaded.metrics.items() if math.isfinite(v)},
            features=loaded.features,
            training_window=TrainingWindow(start=loaded.window_start, end=loaded.window_end),
            predictor=loaded.predictor.kind,  # type: ignore[arg-type]
            loaded_at=loaded.loaded_at,
            version_tags=loaded.version_tags,
        )

    @router.post(
        "/predict", response_model=Prediction, tags=["predict"],
        responses={**UNAVAILABLE, **INVALID, **TOO_LARGE},
    )
    async def predict(
        record: Annotated[CrimeRecord, Body(openapi_examples={
            "portal record": {"summary": "A record as the SODA API returns it",
                              "value": EXAMPLE_RECORD},
            "minimal": {"summary": "Only the required fields", "value": MINIMAL_RECORD},
        })],
        loaded: Annotated[LoadedModel, Depends(require_model)],
        metrics: Annotated[ServerMetrics, Depends(get_metrics)],
    ) -> Response:
        """Arrest probability for one crime record (Socrata field names)."""
        item = (await score(loaded, [record], metrics))[0]
        return _json({**item, "threshold": loaded.threshold, "model": loaded.ref()})

    @router.post(
        "/predict/batch", response_model=BatchPrediction, tags=["predict"],
        responses={**UNAVAILABLE, **INVALID, **TOO_LARGE},
    )
    async def predict_batch(
        body: Annotated[batch_model, Body()],
        loaded: Annotated[LoadedModel, Depends(require_model)],
        metrics: Annotated[ServerMetrics, Depends(get_metrics)],
    ) -> Response:
        """Arrest probabilities for up to ``MAX_BATCH_RECORDS`` records, in request order."""
        items = await score(loaded, body.records, metrics)
        return _json({"predictions": items, "threshold": loaded.threshold,
                      "model": loaded.ref()})

    @router.post(
        "/model/reload", response_model=ReloadResult, tags=["model"],
        dependencies=[Depends(require_api_key)],
        responses={
            401: {"model": ErrorBody, "description": "Missing X-API-Key."},
            403: {"model": ErrorBody, "description": "Wrong X-API-Key."},
            503: {"model": ErrorBody,
                  "description": "No API key configured, registry unreachable or no champion."},
        },
    )
    async def reload(store: Annotated[ModelStore, Depends(get_store)]) -> ReloadResult:
        """Check the registry now and hot-swap if the champion alias moved."""
        outcome = await run_in_threadpool(store.refresh)
        loaded = store.current
        if loaded is None or not store.registry_reachable:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=outcome.message)
        return ReloadResult(
            changed=outcome.changed, model=ModelRef(**loaded.ref()), message=outcome.message
        )

    @router.get(
        "/metrics", tags=["operations"], response_class=Response,
        responses={200: {"content": {"text/plain": {}},
                         "description": "Prometheus text exposition."}},
    )
    async def prometheus(
        metrics: Annotated[ServerMetrics, Depends(get_metrics)],
        store: Annotated[ModelStore, Depends(get_store)],
    ) -> Response:
        """Prometheus metrics: requests and latency per endpoint, predictions, model version."""
        metrics.registry_reachable.set(1 if store.registry_reachable else 0)
        metrics.model_ready.set(1 if store.current is not None else 0)
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    return router
