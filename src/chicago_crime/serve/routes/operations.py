"""``GET /health``, ``GET /ready`` and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from chicago_crime.serve.deps import MetricsDep, StoreDep
from chicago_crime.serve.schemas import Health, ModelRef, Readiness, Refusal

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers (does not check the model)."""
    return Health()


@router.get("/ready", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "No model loaded."}})
async def ready(store: StoreDep) -> Any:
    """Readiness: a model is loaded. ``degraded``: the registry is unreachable, the model is
    the local copy loaded at start, or the champion alias points at a version that was refused
    (named in ``champion_refused``); the model shown keeps serving."""
    loaded = store.current
    state = "unavailable" if loaded is None else "degraded" if store.degraded else "ready"
    failure = store.champion_failure
    body = Readiness(
        status=state,
        model=ModelRef(**loaded.ref()) if loaded else None,
        origin=loaded.origin if loaded else None,
        champion_refused=Refusal(**asdict(failure)) if failure else None,
        message=store.status_message(),
        registry_reachable=store.registry_reachable,
        last_check=store.last_check,
        last_error=store.last_error,
    )
    code = status.HTTP_200_OK if loaded else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text exposition."}})
async def prometheus(metrics: MetricsDep, store: StoreDep, request: Request) -> Response:
    """Prometheus metrics: requests and latency per endpoint, predictions, model version, the
    prediction log (rows written, dropped, queued; database reachable)."""
    metrics.observe(store, request.app.state.prediction_log)
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)
