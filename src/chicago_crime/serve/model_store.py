"""The served model: loads ``models:/<name>@champion`` from MLflow and hot-swaps it.

A background thread polls the registry every ``settings.model_poll_seconds``; when the alias
points at another version the new version is loaded completely (model, predictor, metadata)
before one reference assignment swaps it in. Requests read :attr:`ModelStore.current` once and
keep using that object, so in-flight requests finish on the version they started with. When the
registry is unreachable the store keeps the loaded model and reports itself degraded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chicago_crime.config import Settings
from chicago_crime.model.predict import Predictor, make_predictor

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
DEFAULT_THRESHOLD = 0.5
#: Registry errors that mean "there is no such model/alias" rather than "registry is down".
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}
#: MLflow client defaults for a server: fail fast instead of retrying for minutes.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_mlflow_uri_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version with everything a request needs (immutable)."""

    name: str
    version: str
    run_id: str | None
    source: str
    model: Any
    predictor: Predictor
    threshold: float
    threshold_source: str
    metrics: dict[str, float]
    features: list[str] | None
    window_start: str | None
    window_end: str | None
    version_tags: dict[str, str]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def ref(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id}


@dataclass(frozen=True)
class RefreshOutcome:
    """Result of one registry check."""

    changed: bool
    message: str


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def resolve_threshold(
    version_tags: Mapping[str, str], metrics: Mapping[str, float], params: Mapping[str, str]
) -> tuple[float, str]:
    """Decision threshold: version tag, then run metric, then run param, then 0.5."""
    for source, mapping in (
        ("version tag", version_tags), ("run metric", metrics), ("run param", params)
    ):
        value = _float_or_none(mapping.get("threshold"))
        if value is not None and 0.0 <= value <= 1.0:
            return value, source
    return DEFAULT_THRESHOLD, "default"


def _json_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        parsed = [v.strip() for v in str(value).split(",") if v.strip()]
    return [str(v) for v in parsed] if isinstance(parsed, list) else None


def _model_features(model: Any) -> list[str] | None:
    """Names of the final estimator's inputs, read from the fitted pipeline (best effort)."""
    steps = getattr(model, "steps", None)
    final = steps[-1][1] if steps else model
    names = getattr(final, "feature_names_in_", None)
    if names is None and steps and len(steps) > 1:
        try:
            names = model[:-1].get_feature_names_out()
        except Exception:  # not every transformer names its outputs
            names = None
    return [str(n) for n in names] if names is not None else None


def _check_records() -> list[dict[str, Any]]:
    from chicago_crime.serve.schemas import SAMPLE_RECORDS, CrimeRecord

    return [CrimeRecord.model_validate(r).model_input() for r in SAMPLE_RECORDS]


def no_champion_message(name: str, poll_seconds: float) -> str:
    """How an operator gets a model served."""
    wait = f" or wait up to {poll_seconds:g} s" if poll_seconds else ""
    return (
        f"no version of registered model '{name}' has the alias '{CHAMPION_ALIAS}' yet. "
        "Train one (the training Airflow DAG or the training CLI registers a version and "
        "promotes the first one), or point the alias at an existing version, e.g. "
        f"MlflowClient().set_registered_model_alias('{name}', '{CHAMPION_ALIAS}', '1'); "
        f"then POST /model/reload{wait}."
    )


class ModelStore:
    """Holds the champion model and keeps it in sync with the MLflow registry."""

    def __init__(
        self,
        settings: Settings,
        *,
        alias: str = CHAMPION_ALIAS,
        prefer_fast: bool = True,
        trust_registry: bool = True,
        on_change: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.alias = alias
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
        if trust_registry:
            # The platform's own registry is trusted: skops/pickle loading needs this opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")

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
                return no_champion_message(self.name, self.settings.model_poll_seconds)
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
        from mlflow import MlflowClient

        uri = self.settings.mlflow_tracking_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _load(self, client: Any, version: Any) -> LoadedModel:
        import mlflow
        import mlflow.sklearn

        uri = self.settings.mlflow_tracking_uri
        with _mlflow_uri_lock:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            model = mlflow.sklearn.load_model(f"models:/{self.name}/{version.version}")
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        run_tags: dict[str, str] = {}
        if version.run_id:
            try:
                run = client.get_run(version.run_id)
                metrics = {k: float(v) for k, v in run.data.metrics.items()}
                params = dict(run.data.params)
                run_tags = dict(run.data.tags)
            except Exception as exc:  # metadata is optional: serve the model anyway
                log.warning("run %s of version %s unreadable: %s", version.run_id, version, exc)
        tags = {str(k): str(v) for k, v in (version.tags or {}).items()}
        threshold, threshold_source = resolve_threshold(tags, metrics, params)
        features = (
            _json_list(tags.get("features"))
            or _json_list(params.get("features"))
            or _json_list(run_tags.get("features"))
            or _model_features(model)
        )

        def meta(key: str) -> str | None:
            return params.get(key) or run_tags.get(key) or tags.get(key)

        predictor = make_predictor(model, _check_records(), prefer_fast=self.prefer_fast)
        return LoadedModel(
            name=self.name,
            version=str(version.version),
            run_id=version.run_id,
            source=str(version.source),
            model=model,
            predictor=predictor,
            threshold=threshold,
            threshold_source=threshold_source,
            metrics=metrics,
            features=features,
            window_start=meta("window_start"),
            window_end=meta("window_end"),
            version_tags=tags,
        )

    def refresh(self) -> RefreshOutcome:
        """Check the alias now; load and swap in a new version if it moved. Never raises."""
        from mlflow.exceptions import MlflowException

        with self._refresh_lock:
            self.last_check = datetime.now(UTC)
            try:
                client = self._client()
                version = client.get_model_version_by_alias(self.name, self.alias)
            except MlflowException as exc:
                if exc.error_code in _MISSING_CODES:
                    self.registry_reachable, self.champion_missing = True, True
                    self.last_error = None
                    return RefreshOutcome(False, no_champion_message(
                        self.name, self.settings.model_poll_seconds))
                return self._unreachable(exc)
            except Exception as exc:
                return self._unreachable(exc)
            self.registry_reachable, self.champion_missing = True, False
            current = self._current
            if current is not None and current.version == str(version.version):
                self.last_error = None
                return RefreshOutcome(False, f"version {current.version} is already served")
            try:
                loaded = self._load(client, version)
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
