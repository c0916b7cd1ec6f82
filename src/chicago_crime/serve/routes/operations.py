"""``GET /health``, ``GET /ready`` and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from chicago_crime.serve.deps import MetricsDep, StoreDep
from chicago_crime.serve.schemas import Health, ModelRef, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers (does not check the model)."""
    return Health()


@router.get("/ready", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "No model loaded."}})
async def ready(store: StoreDep) -> Any:
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


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text exposition."}})
async def prometheus(metrics: MetricsDep, store: StoreDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, predictions, model version."""
    metrics.registry_reachable.set(1 if store.registry_reachable else 0)
    metrics.model_ready.set(1 if store.current is not None else 0)
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)
