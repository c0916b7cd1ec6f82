"""The served model: loads the version the champion alias points at and hot-swaps it.

A background thread polls the registry every ``settings.model_poll_seconds``; when the alias
(``settings.champion_alias``) points at another version the new version is loaded completely
(model, predictor, model card) before one reference assignment swaps it in. Requests read
:attr:`ModelStore.current` once and keep using that object, so in-flight requests finish on the
version they started with. When the registry is unreachable the store keeps the loaded model
and reports itself degraded. Every registry look-up goes through
:mod:`chicago_crime.model.registry`; the model's threshold, features and window are its
:class:`~chicago_crime.model.registry.ModelCard`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chicago_crime.config import Settings
from chicago_crime.model import registry
from chicago_crime.model.predict import Predictor, make_predictor
from chicago_crime.model.registry import ModelCard

log = logging.getLogger(__name__)

#: Decision threshold of a version registered without a model card.
DEFAULT_THRESHOLD = 0.5
#: MLflow client defaults for a server: fail fast instead of retrying for minutes.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version with everything a request needs (immutable)."""

    card: ModelCard
    source: str
    model: Any
    predictor: Predictor
    version_tags: dict[str, str]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def run_id(self) -> str | None:
        return self.card.run_id

    @property
    def threshold(self) -> float:
        """The card's threshold (:data:`DEFAULT_THRESHOLD` for a version without a card)."""
        return DEFAULT_THRESHOLD if self.card.threshold is None else self.card.threshold

    @property
    def threshold_source(self) -> str:
        return "default" if self.card.threshold is None else "model card"

    def ref(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id}


@dataclass(frozen=True)
class RefreshOutcome:
    """Result of one registry check."""

    changed: bool
    message: str


def _check_records() -> list[dict[str, Any]]:
    from chicago_crime.serve.schemas import SAMPLE_RECORDS, CrimeRecord

    return [CrimeRecord.model_validate(r).model_input() for r in SAMPLE_RECORDS]


def no_champion_message(name: str, alias: str, poll_seconds: float) -> str:
    """How an operator gets a model served."""
    wait = f" or wait up to {poll_seconds:g} s" if poll_seconds else ""
    return (
        f"no version of registered model '{name}' has the alias '{alias}' yet. "
        "Train one (the training Airflow DAG or the training CLI registers a version and "
        "promotes the first one), or point the alias at an existing version, e.g. "
        f"MlflowClient().set_registered_model_alias('{name}', '{alias}', '1'); "
        f"then POST /model/reload{wait}."
    )


class ModelStore:
    """Holds the champion model and keeps it in sync with the MLflow registry."""

    def __init__(
        self,
        settings: Settings,
        *,
        prefer_fast: bool = True,
        on_change: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.alias = settings.champion_alias
        self.prefer_fast = prefer_fast
        self.on_change = on_change
        self._current: LoadedModel | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry_reachable = False
        self.champion_missing = False
        self.last_check: datetime | None = None
        self.last_error: str | None = None
        for key, value in MLFLOW_CLIENT_ENV.items():
            os.environ.setdefault(key, value)

    # -- reading -------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The model to use for one request (read once per request)."""
        return self._current

    @property
    def degraded(self) -> bool:
        return self._current is not None and not self.registry_reachable

    def status_message(self) -> str | None:
        if self._current is None:
            if self.champion_missing:
                return no_champion_message(self.name, self.alias,
                                           self.settings.model_poll_seconds)
            return (
                f"no model loaded: the MLflow registry at {self.settings.mlflow_tracking_uri} "
                f"could not be read ({self.last_error}); retrying every "
                f"{self.settings.model_poll_seconds:g} s"
            )
        if not self.registry_reachable:
            return (
                f"serving version {self._current.version}; the registry is unreachable "
                f"({self.last_error}), so alias changes are not picked up"
            )
        if self.champion_missing:
            return (
                f"serving version {self._current.version}; the alias '{self.alias}' no longer "
                "exists in the registry"
            )
        return None

    # -- registry ------------------------------------------------------------------------
    def _client(self) -> Any:
        return registry.client_for(self.settings)

    def _load(self, version: Any) -> LoadedModel:
        model = registry.load_version(self.name, str(version.version),
                                      tracking_uri=self.settings.mlflow_tracking_uri)
        return LoadedModel(
            card=ModelCard.from_version(self.name, version),
            source=str(version.source),
            model=model,
            predictor=make_predictor(model, _check_records(), prefer_fast=self.prefer_fast),
            version_tags={str(k): str(v) for k, v in (version.tags or {}).items()},
        )

    def refresh(self) -> RefreshOutcome:
        """Check the alias now; load and swap in a new version if it moved. Never raises."""
        with self._refresh_lock:
            self.last_check = datetime.now(UTC)
            try:
                version = registry.version_by_alias(self._client(), self.name, self.alias)
            except Exception as exc:
                return self._unreachable(exc)
            self.registry_reachable = True
            if version is None:
                self.champion_missing, self.last_error = True, None
                return RefreshOutcome(False, no_champion_message(
                    self.name, self.alias, self.settings.model_poll_seconds))
            self.champion_missing = False
            current = self._current
            if current is not None and current.version == str(version.version):
                self.last_error = None
                return RefreshOutcome(False, f"version {current.version} is already served")
            try:
                loaded = self._load(version)
            except Exception as exc:
                self.last_error = f"loading version {version.version} failed: {exc}"
                log.exception("loading %s version %s failed", self.name, version.version)
                return RefreshOutcome(False, self.last_error)
            self._current = loaded  # the atomic hot swap
            self.last_error = None
            log.info("serving %s version %s (%s path)", self.name, loaded.version,
                     loaded.predictor.kind)
            if self.on_change is not None:
                self.on_change(loaded)
            previous = f" (was {current.version})" if current else ""
            return RefreshOutcome(True, f"now serving version {loaded.version}{previous}")

    def _unreachable(self, exc: BaseException) -> RefreshOutcome:
        self.registry_reachable = False
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("model registry unreachable: %s", self.last_error)
        return RefreshOutcome(False, f"registry unreachable: {self.last_error}")

    # -- background polling --------------------------------------------------------------
    def start(self) -> None:
        """Load the champion (if any) and start polling in a daemon thread."""
        self.refresh()
        interval = self.settings.model_poll_seconds
        if interval > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._poll, args=(interval,), name="model-poll", daemon=True
            )
            self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
