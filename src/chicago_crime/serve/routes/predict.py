"""``POST /predict`` and ``POST /predict/batch``: arrest probabilities for raw records.

Every prediction served is handed to the prediction log (``monitoring.prediction_log``) once it
is computed: a queue append, the writing happens in the log's own thread.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Body, HTTPException, Request, Response, status

from chicago_crime.monitoring.prediction_log import Served
from chicago_crime.serve.deps import BatchDep, MetricsDep, ModelDep
from chicago_crime.serve.limits import SafeJSONRoute
from chicago_crime.serve.metrics import ServerMetrics
from chicago_crime.serve.model_store import LoadedModel
from chicago_crime.serve.routes.common import INVALID, TOO_LARGE, UNAVAILABLE
from chicago_crime.serve.schemas import (
    EXAMPLE_RECORD,
    MINIMAL_RECORD,
    BatchPrediction,
    CrimeRecord,
    Prediction,
)

router = APIRouter(tags=["predict"], route_class=SafeJSONRoute)

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
        # abandoned on cancel: API_REQUEST_TIMEOUT_SECONDS answers at once (the thread's
        # result is dropped when it finishes)
        items = await anyio.to_thread.run_sync(_score_sync, loaded, records,
                                               abandon_on_cancel=True)
    metrics.record_predictions(loaded.version, [i["arrest"] for i in items])
    return items


def log_predictions(request: Request, loaded: LoadedModel, records: list[CrimeRecord],
                    items: list[dict[str, Any]]) -> None:
    """Queue the predictions for the prediction log (one row per record; never blocks)."""
    prediction_log = request.app.state.prediction_log
    if prediction_log is None:
        return
    state = request.scope.get("state") or {}
    started = state.get("started")
    prediction_log.submit(Served(
        request_id=state.get("request_id") or uuid.uuid4().hex,
        logged_at=datetime.now(UTC),
        model_version=loaded.version,
        threshold=loaded.threshold,
        latency_ms=(time.perf_counter() - started) * 1000 if started else math.nan,
        records=[r.__dict__ for r in records],
        record_ids=[r.record_id for r in records],
        probabilities=[i["arrest_probability"] for i in items],
        decisions=[i["arrest"] for i in items],
    ))


def _json(body: dict[str, Any]) -> Response:
    """Responses built directly (already validated data): skips a second pydantic pass."""
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.post("/predict", response_model=Prediction,
             responses={**UNAVAILABLE, **INVALID, **TOO_LARGE})
async def predict(
    record: Annotated[CrimeRecord, Body(openapi_examples={
        "portal record": {"summary": "A record as the SODA API returns it",
                          "value": EXAMPLE_RECORD},
        "minimal": {"summary": "Only the required fields", "value": MINIMAL_RECORD},
    })],
    loaded: ModelDep,
    metrics: MetricsDep,
    request: Request,
) -> Response:
    """Arrest probability for one crime record (Socrata field names)."""
    items = await score(loaded, [record], metrics)
    log_predictions(request, loaded, [record], items)
    return _json({**items[0], "threshold": loaded.threshold, "model": loaded.ref()})


@router.post("/predict/batch", response_model=BatchPrediction,
             responses={**UNAVAILABLE, **INVALID, **TOO_LARGE})
async def predict_batch(body: BatchDep, loaded: ModelDep, metrics: MetricsDep,
                        request: Request) -> Response:
    """Arrest probabilities for up to ``MAX_BATCH_RECORDS`` records, in request order."""
    items = await score(loaded, body.records, metrics)
    log_predictions(request, loaded, body.records, items)
    return _json({"predictions": items, "threshold": loaded.threshold, "model": loaded.ref()})
