"""``GET /model`` (the served version and its model card) and ``POST /model/reload``."""

from __future__ import annotations

import math
from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from chicago_crime.serve.deps import ModelDep, SettingsDep, StoreDep, require_api_key
from chicago_crime.serve.routes.common import UNAVAILABLE
from chicago_crime.serve.schemas import (
    ErrorBody,
    ModelInfo,
    ModelRef,
    Refusal,
    ReloadResult,
    TrainingWindow,
)

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses=UNAVAILABLE)
async def model_info(loaded: ModelDep, settings: SettingsDep, store: StoreDep) -> ModelInfo:
    """The served version: its model card (threshold, features, training window, metrics);
    ``champion_refused`` names a champion version that is not served, and why."""
    card = loaded.card
    return ModelInfo(
        name=loaded.name,
        version=loaded.version,
        alias=settings.champion_alias,
        run_id=loaded.run_id,
        source=loaded.source,
        threshold=loaded.threshold,
        threshold_source=loaded.threshold_source,
        metrics={k: v for k, v in card.metrics.items() if math.isfinite(v)},
        features=list(card.features) or None,
        training_window=TrainingWindow(start=card.window_start, end=card.window_end),
        month=card.month,
        predictor=loaded.predictor.kind,  # type: ignore[arg-type]
        loaded_at=loaded.loaded_at,
        version_tags=loaded.version_tags,
        origin=loaded.origin,
        champion_refused=Refusal(**asdict(failure)) if (failure := store.champion_failure)
        else None,
    )


@router.post(
    "/model/reload", response_model=ReloadResult, dependencies=[Depends(require_api_key)],
    responses={
        401: {"model": ErrorBody, "description": "Missing X-API-Key."},
        403: {"model": ErrorBody, "description": "Wrong X-API-Key."},
        503: {"model": ErrorBody,
              "description": "No API key configured, registry unreachable or no champion."},
    },
)
async def reload(store: StoreDep) -> ReloadResult:
    """Check the registry now and hot-swap if the champion alias moved."""
    outcome = await run_in_threadpool(lambda: store.refresh(force=True))
    loaded = store.current
    if loaded is None or not store.registry_reachable:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=outcome.message)
    return ReloadResult(
        changed=outcome.changed, model=ModelRef(**loaded.ref()), message=outcome.message
    )
