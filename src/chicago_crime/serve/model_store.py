"""The served model: loads the version the champion alias points at and hot-swaps it.

A background thread polls the registry every ``settings.model_poll_seconds``; when the alias
(``settings.champion_alias``) points at another version the new version is fetched, loaded
and checked completely (:mod:`chicago_crime.model.artifact`: skops only, the package's trusted
types, its own serving check reproduced) before one reference assignment swaps it in.
Requests read :attr:`ModelStore.current` once and keep using that object, so in-flight
requests finish on the version they started with.

* A version that is refused (pickle, untrusted types, no or failed serving check) is never
  fetched again by this process; one that failed for another reason (download, registry) is
  retried with exponential backoff, not on every poll. Either way the previous model keeps
  serving and ``/ready`` names the refused version and why.
* Every version that went live is kept as the last good copy (:mod:`.model_cache`). At start,
  when the registry cannot be read (or its champion cannot be loaded), that copy is verified
  again and served, and the store reports itself degraded until the registry answers; when it
  is the registry's champion, it is verified and served without a download.

Every registry look-up goes through :mod:`chicago_crime.model.registry`; the model's
threshold, features and window are its :class:`~chicago_crime.model.registry.ModelCard`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from chicago_crime.config import Settings
from chicago_crime.model import artifact, registry
from chicago_crime.model.artifact import ModelRefused, VersionArtifact
from chicago_crime.model.predict import Predictor, make_predictor
from chicago_crime.model.registry import ModelCard
from chicago_crime.serve.model_cache import ModelCache

log = logging.getLogger(__name__)

#: Decision threshold of a version registered without a model card.
DEFAULT_THRESHOLD = 0.5
#: MLflow client defaults for a server: fail fast instead of retrying for minutes.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
#: Backoff after a failed (not refused) load: first delay (at least), and the longest one.
RETRY_MIN_SECONDS = 5.0
RETRY_MAX_SECONDS = 3600.0
#: Serving-check records also used to compare the fast path with pandas at load time.
PATH_CHECK_RECORDS = 50


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version with everything a request needs (immutable)."""

    card: ModelCard
    source: str
    model: Any
    predictor: Predictor
    version_tags: dict[str, str]
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: ``registry`` (confirmed by the registry) or ``cache`` (the local copy, at start).
    origin: Literal["registry", "cache"] = "registry"

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


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be served: refused for good, or retried after ``retry_at``."""

    version: str
    reason: str
    refused: bool
    attempts: int
    at: datetime
    retry_at: float | None  # time.monotonic(); None when refused

    def message(self, alias: str) -> str:
        what = "was refused" if self.refused else f"failed to load ({self.attempts}x)"
        return f"version {self.version} (alias '{alias}') {what}: {self.reason}"


def _check_records() -> list[dict[str, Any]]:
    from chicago_crime.serve.schemas import SAMPLE_RECORDS, CrimeRecord

    return [CrimeRecord.model_validate(r).model_input() for r in SAMPLE_RECORDS]


def _path_check_records(check: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample records plus the first serving-check records the API would accept."""
    from pydantic import ValidationError

    from chicago_crime.serve.schemas import CrimeRecord

    out = _check_records()
    for raw in artifact.check_records(check)[:PATH_CHECK_RECORDS]:
        try:
            out.append(CrimeRecord.model_validate(raw).model_input())
        except ValidationError:
            continue
    return out


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
        #: Versions that failed to load, by version; the alias's one is ``champion_failure``.
        self.failures: dict[str, LoadFailure] = {}
        self.champion_failure: LoadFailure | None = None
        self.cache_error: str | None = None
        folder = settings.model_cache_dir.strip()
        self.cache = ModelCache(folder, self.name) if folder else None
        for key, value in MLFLOW_CLIENT_ENV.items():
            os.environ.setdefault(key, value)

    # -- reading -------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The model to use for one request (read once per request)."""
        return self._current

    @property
    def degraded(self) -> bool:
        """Serving, but not the registry's champion as it stands (or cannot tell)."""
        current = self._current
        return current is not None and (
            not self.registry_reachable or self.champion_missing
            or self.champion_failure is not None or current.origin == "cache")

    def status_message(self) -> str | None:
        current, failure = self._current, self.champion_failure
        refusal = f"; {failure.message(self.alias)}" if failure is not None else ""
        if current is None:
            if failure is not None:
                return f"no model loaded: {failure.message(self.alias)}"
            if self.champion_missing:
                return no_champion_message(self.name, self.alias,
                                           self.settings.model_poll_seconds)
            cache = f"; local copy: {self.cache_error}" if self.cache_error else ""
            return (
                f"no model loaded: the MLflow registry at {self.settings.mlflow_tracking_uri} "
                f"could not be read ({self.last_error}); retrying every "
                f"{self.settings.model_poll_seconds:g} s{cache}"
            )
        origin = (f"the local copy of version {current.version} (verified at start)"
                  if current.origin == "cache" else f"version {current.version}")
        if not self.registry_reachable:
            return (f"serving {origin}; the registry is unreachable ({self.last_error}), so "
                    f"alias changes are not picked up{refusal}")
        if self.champion_missing:
            return (f"serving {origin}; the alias '{self.alias}' no longer exists in the "
                    "registry")
        if failure is not None:
            return f"serving {origin}{refusal}"
        if current.origin == "cache":
            return f"serving {origin}; waiting for the registry to confirm it"
        return None

    # -- registry ------------------------------------------------------------------------
    def _client(self) -> Any:
        return registry.client_for(self.settings)

    def _download_dir(self) -> str:
        if self.cache is not None:
            return str(self.cache.folder / "downloads")
        return tempfile.gettempdir()

    def _build(self, meta: Any, art: VersionArtifact,
               origin: Literal["registry", "cache"]) -> LoadedModel:
        """Deserialise and verify ``art`` (ModelRefused if it fails) into a LoadedModel."""
        model = artifact.load(art)
        return LoadedModel(
            card=ModelCard.from_version(self.name, meta),
            source=str(getattr(meta, "source", "") or ""),
            model=model,
            predictor=make_predictor(model, _path_check_records(art.check),
                                     prefer_fast=self.prefer_fast),
            version_tags={str(k): str(v) for k, v in (meta.tags or {}).items()},
            origin=origin,
        )

    def _remember_failure(self, version: str, exc: BaseException) -> LoadFailure:
        refused = isinstance(exc, ModelRefused)
        previous = self.failures.get(version)
        attempts = (previous.attempts if previous else 0) + 1
        delay = min(RETRY_MAX_SECONDS, max(RETRY_MIN_SECONDS, self.settings.model_poll_seconds)
                    * 2 ** (attempts - 1))
        reason = str(exc) if refused else f"{type(exc).__name__}: {str(exc)[:300]}"
        # artifact-controlled text: keep it printable in any JSON response
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")[:500]
        failure = LoadFailure(version=version, reason=reason, refused=refused,
                              attempts=attempts, at=datetime.now(UTC),
                              retry_at=None if refused else time.monotonic() + delay)
        self.failures[version] = failure
        if refused:
            log.error("%s version %s refused: %s", self.name, version, reason)
        else:
            log.warning("loading %s version %s failed (attempt %d, next in %.0f s): %s",
                        self.name, version, attempts, delay, reason)
        return failure

    def refresh(self, *, force: bool = False) -> RefreshOutcome:
        """Check the alias now; load and swap in a new version if it moved. Never raises.

        ``force`` retries a version whose last load failed for a transient reason before its
        backoff ends (a refused version is never retried)."""
        with self._refresh_lock:
            self.last_check = datetime.now(UTC)
            try:
                client = self._client()
                meta = registry.version_by_alias(client, self.name, self.alias)
            except Exception as exc:
                return self._unreachable(exc)
            self.registry_reachable = True
            self.last_error = None
            if meta is None:
                self.champion_missing, self.champion_failure = True, None
                return RefreshOutcome(False, no_champion_message(
                    self.name, self.alias, self.settings.model_poll_seconds))
            self.champion_missing = False
            version = str(meta.version)
            current = self._current
            if current is not None and current.version == version:
                self.champion_failure = None
                if current.origin == "cache":  # the registry confirms the local copy
                    self._swap(replace(current, origin="registry",
                                       card=ModelCard.from_version(self.name, meta),
                                       source=str(meta.source),
                                       version_tags={str(k): str(v)
                                                     for k, v in (meta.tags or {}).items()}))
                    return RefreshOutcome(True, f"version {version} (local copy) confirmed "
                                                "by the registry")
                return RefreshOutcome(False, f"version {current.version} is already served")
            failure = self.failures.get(version)
            if failure is not None and (failure.refused or (
                    not force and time.monotonic() < (failure.retry_at or 0))):
                self.champion_failure = failure
                return RefreshOutcome(False, failure.message(self.alias))
            if current is None and (loaded := self._cached_champion(meta)) is not None:
                self.failures.pop(version, None)
                self.champion_failure = None
                self._swap(loaded)
                return RefreshOutcome(True, f"now serving version {version} (the local copy "
                                            "of the registry's champion, verified)")
            try:
                art = artifact.fetch(client, self.name, version,
                                     download_dir=self._download_dir())
                loaded = self._build(meta, art, origin="registry")
            except Exception as exc:
                self.champion_failure = self._remember_failure(version, exc)
                return RefreshOutcome(False, self.champion_failure.message(self.alias))
            self.failures.pop(version, None)
            self.champion_failure = None
            self._swap(loaded)
            self._keep(loaded, art)
            previous = f" (was {current.version})" if current else ""
            return RefreshOutcome(True, f"now serving version {loaded.version}{previous}")

    def _swap(self, loaded: LoadedModel) -> None:
        self._current = loaded  # the atomic hot swap
        log.info("serving %s version %s (%s path, from %s)", self.name, loaded.version,
                 loaded.predictor.kind, loaded.origin)
        if self.on_change is not None:
            self.on_change(loaded)

    def _keep(self, loaded: LoadedModel, art: VersionArtifact) -> None:
        """Write the local copy (a failure to write only costs the cold start)."""
        if self.cache is None:
            return
        try:
            self.cache.save(version=loaded.version, run_id=loaded.run_id,
                            source=loaded.source, tags=loaded.version_tags, artifact=art)
        except OSError as exc:
            log.warning("could not keep the local model copy in %s: %s", self.cache.folder,
                        exc)

    def _cached_champion(self, meta: Any) -> LoadedModel | None:
        """At start: the local copy when it is the version the registry names (no download;
        verified all the same), else None."""
        if self.cache is None:
            return None
        doc = self.cache.read_document()
        if not doc or str(doc.get("version")) != str(meta.version):
            return None
        try:
            cached = self.cache.load()
            return None if cached is None else self._build(meta, cached.artifact,
                                                           origin="registry")
        except Exception as exc:
            log.warning("the local copy of version %s cannot be used: %s", meta.version, exc)
            return None

    def load_cached(self) -> bool:
        """Serve the local copy when nothing is loaded (verified again); whether it is."""
        if self.cache is None:
            return False
        with self._refresh_lock:
            if self._current is not None or self.champion_missing:
                return False
            try:
                cached = self.cache.load()
                if cached is None:
                    self.cache_error = f"none in {self.cache.folder}"
                    return False
                meta = SimpleNamespace(version=cached.version, run_id=cached.run_id,
                                       tags=cached.tags, source=cached.source)
                loaded = self._build(meta, cached.artifact, origin="cache")
            except Exception as exc:
                self.cache_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("the local model copy in %s cannot be served: %s",
                          self.cache.folder, self.cache_error)
                return False
            self.cache_error = None
            self._swap(loaded)
            return True

    def _unreachable(self, exc: BaseException) -> RefreshOutcome:
        self.registry_reachable = False
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("model registry unreachable: %s", self.last_error)
        return RefreshOutcome(False, f"registry unreachable: {self.last_error}")

    # -- background polling --------------------------------------------------------------
    def start(self) -> None:
        """Load the champion (else the local copy) and start polling in a daemon thread."""
        self.refresh()
        if self._current is None:
            self.load_cached()
        self._clean_downloads()
        interval = self.settings.model_poll_seconds
        if interval > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._poll, args=(interval,), name="model-poll", daemon=True
            )
            self._thread.start()

    def _clean_downloads(self) -> None:
        """Remove download folders a killed process left behind (ours are temporary)."""
        if self.cache is None:
            return
        folder = Path(self._download_dir())
        for leftover in folder.glob("model-*") if folder.is_dir() else ():
            if time.time() - leftover.stat().st_mtime > 3600:
                shutil.rmtree(leftover, ignore_errors=True)

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
