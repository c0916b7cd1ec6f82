"""The MLflow model registry: the model card, versions, aliases, the gate and rollback.

Every registry look-up of the platform goes through this module (the trainer, the CLI, the
model server, the notebooks): the client, alias resolution and what "not found" means.

* Every trained model is registered as a new version of ``settings.model_name`` with its
  :class:`ModelCard` written once as version tags, and gets the alias ``challenger``.
* :func:`gate` scores the challenger and the current champion on the *same* records (the new
  month's test split) and moves the champion alias (``settings.champion_alias``) only when the
  challenger is better on ``settings.primary_metric`` by more than
  ``settings.promotion_margin``. Ties and smaller gains keep the champion; the first model
  becomes champion. The decision and both scores are recorded as tags of the new version
  (``gate_*``).
* A promoted version remembers the version it replaced in the tag ``previous_champion``;
  :func:`rollback` moves the champion alias back along that chain (the rolled-back version is
  tagged ``rolled_back_to``, the restored one ``restored_from``).

Retraining the same month on the same data scores the same as the champion, so the gate keeps
the champion: reruns never promote a second version.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from chicago_crime.config import Settings, get_settings

log = logging.getLogger(__name__)

#: The alias every newly registered version gets (the champion's lives in the settings).
CHALLENGER = "challenger"
PREVIOUS_TAG = "previous_champion"
#: Registry error codes that mean "no such model, version or alias" (not "registry down").
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"})


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs (no champion, no previous one)."""


# --------------------------------------------------------------------------------------------
# the model card
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCard:
    """What a registered version is: written once as version tags by the trainer, read back
    by the model server, the CLI and the notebooks (:func:`card`).

    ``version`` and ``run_id`` are the registry's own (the version is assigned when the card
    is registered); every other field is a version tag (:meth:`tags`). A version registered
    without a card (by hand) reads back with ``threshold`` None and empty fields.
    """

    name: str
    #: Decision threshold chosen at training time (None: the version has no card).
    threshold: float | None
    #: The classifier's input features (the selected ones), in order.
    features: tuple[str, ...] = ()
    #: The ETL month trained on and the dates of its records (``YYYY-MM-DD``).
    month: str | None = None
    window_start: str | None = None
    window_end: str | None = None
    #: Test-split metrics of that month (keys of ``evaluate.binary_metrics``).
    metrics: dict[str, float] = field(default_factory=dict)
    #: Calibration method (``isotonic``/``sigmoid``), model family, balanced in the folds.
    calibration: str | None = None
    model_family: str | None = None
    balanced: bool | None = None
    #: The registry's version number (assigned at registration) and the training run.
    version: str = ""
    run_id: str | None = None

    #: The version tags a card is written as.
    TAG_KEYS = ("threshold", "features", "month", "window_start", "window_end", "metrics",
                "calibration", "model_family", "balanced")

    def tags(self) -> dict[str, str]:
        """The card as version tags (strings; lists and metrics as JSON)."""
        values: dict[str, Any] = {
            "threshold": None if self.threshold is None else f"{self.threshold:.6f}",
            "features": json.dumps(list(self.features)),
            "month": self.month, "window_start": self.window_start,
            "window_end": self.window_end,
            "metrics": json.dumps({k: round(v, 6) for k, v in self.metrics.items()
                                   if math.isfinite(v)}, sort_keys=True),
            "calibration": self.calibration, "model_family": self.model_family,
            "balanced": None if self.balanced is None else str(self.balanced).lower(),
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    @classmethod
    def from_version(cls, name: str, version: Any) -> ModelCard:
        """The card of an MLflow ``ModelVersion`` (read from its tags)."""
        tags = dict(version.tags or {})

        def text(key: str) -> str | None:
            return tags.get(key) or None

        threshold = _float(tags.get("threshold"))
        balanced = text("balanced")
        return cls(
            name=name, version=str(version.version), run_id=version.run_id,
            threshold=threshold if threshold is not None and 0 <= threshold <= 1 else None,
            features=tuple(_json(tags.get("features"), [])),
            month=text("month"), window_start=text("window_start"),
            window_end=text("window_end"),
            metrics={k: float(v) for k, v in _json(tags.get("metrics"), {}).items()},
            calibration=text("calibration"), model_family=text("model_family"),
            balanced=None if balanced is None else balanced == "true",
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "features": list(self.features)}


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _json(value: str | None, default: Any) -> Any:
    if not value:
        return default
    try:
        parsed = json.loads(value)
    except ValueError:
        return default
    return parsed if isinstance(parsed, type(default)) else default


# --------------------------------------------------------------------------------------------
# look-ups
# --------------------------------------------------------------------------------------------
def client_for(settings: Settings | None = None) -> Any:
    """An ``MlflowClient`` on the platform's tracking server and registry."""
    from mlflow import MlflowClient

    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.mlflow_tracking_uri, registry_uri=s.mlflow_tracking_uri)


def is_not_found(exc: BaseException) -> bool:
    """Whether a registry error means "no such model, version or alias"."""
    return getattr(exc, "error_code", "") in NOT_FOUND_CODES


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None (no model / no alias).

    Any other error (the registry is unreachable, ...) is raised.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def card(client: Any, name: str, alias: str) -> ModelCard | None:
    """The card of the version ``alias`` points at (None when the alias is unset)."""
    version = version_by_alias(client, name, alias)
    return None if version is None else ModelCard.from_version(name, version)


def load_version(name: str, version: str, tracking_uri: str | None = None, *,
                 client: Any | None = None) -> Any:
    """Load one registered version without executing anything it contains.

    skops only, with the package's trusted types (never the artifact's), and only after it
    reproduces its run's serving check (:mod:`chicago_crime.model.artifact`); anything else
    raises :class:`~chicago_crime.model.artifact.ModelRefused`. The model server and the
    training gate load through here. ``client`` (or ``tracking_uri``, else MLflow's current
    registry URI) is the server read; the platform's registry and tracking server are one.
    """
    import mlflow

    from chicago_crime.model import artifact

    if client is None:
        uri = tracking_uri or mlflow.get_registry_uri()
        client = mlflow.MlflowClient(uri, uri)
    return artifact.load(artifact.fetch(client, name, str(version)))


# --------------------------------------------------------------------------------------------
# registration, gate, rollback
# --------------------------------------------------------------------------------------------
def register(client: Any, name: str, model_uri: str, run_id: str, card: ModelCard | None = None,
             model_id: str | None = None, wait_seconds: float = 300) -> Any:
    """Register ``model_uri`` as a new version of ``name`` (its card as version tags) and
    point ``challenger`` at it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="Calibrated probability that a reported Chicago crime ends in "
                              "an arrest, from a raw Chicago Data Portal record.")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=model_uri, run_id=run_id,
                                          tags=card.tags() if card else {}, model_id=model_id)
    deadline = time.monotonic() + wait_seconds
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(name, version.version)
    if version.status != "READY":
        raise RegistryError(f"{name} version {version.version} is {version.status}")
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    log.info("registered %s version %s (alias %s)", name, version.version, CHALLENGER)
    return version


@dataclass
class GateDecision:
    """What :func:`gate` decided (also recorded as ``gate_*`` version tags)."""

    version: str
    promoted: bool
    reason: str
    metric: str
    margin: float
    challenger_score: float
    champion_version: str | None
    champion_score: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger_score: float, champion_score: float | None,
           margin: float) -> tuple[bool, str]:
    """Promote only when the challenger beats the champion by more than ``margin``."""
    if champion_score is None:
        return True, "no champion yet: the first model becomes champion"
    gain = challenger_score - champion_score
    if gain > margin:
        return True, f"challenger better by {gain:.6f} > margin {margin:g}"
    if gain == 0:
        return False, "tie: the champion is kept"
    return False, f"gain {gain:.6f} <= margin {margin:g}: the champion is kept"


def gate(client: Any, name: str, version: str, score: Callable[[Any], float], *,
         champion_alias: str, metric: str, margin: float, challenger_model: Any | None = None,
         load: Callable[[str, str], Any] = load_version) -> GateDecision:
    """Score champion and challenger with ``score(model)``; move ``champion_alias`` if earned.

    ``score`` maps a loaded model to the primary metric on the current test records (higher
    is better). ``challenger_model`` avoids reloading the just-trained model.
    """
    version = str(version)
    champion = version_by_alias(client, name, champion_alias)
    challenger_score = float(score(challenger_model if challenger_model is not None
                                   else load(name, version)))
    champion_score: float | None = None
    champion_version = champion.version if champion is not None else None
    if champion is not None and str(champion.version) == version:
        promoted, reason = False, "this version is already the champion"
        champion_score = challenger_score
    else:
        if champion is not None:
            try:
                champion_score = float(score(load(name, champion.version)))
            except Exception as exc:  # an unloadable champion cannot be served either
                log.warning("champion v%s could not be scored", champion.version, exc_info=True)
                promoted, reason = True, f"champion v{champion.version} could not be scored: {exc}"
            else:
                promoted, reason = decide(challenger_score, champion_score, margin)
        else:
            promoted, reason = decide(challenger_score, None, margin)
    decision = GateDecision(version=version, promoted=promoted, reason=reason, metric=metric,
                            margin=margin, challenger_score=challenger_score,
                            champion_version=champion_version, champion_score=champion_score)
    tags = {
        "gate_metric": metric, "gate_margin": f"{margin:g}",
        "gate_challenger_score": f"{challenger_score:.6f}",
        "gate_champion_score": "" if champion_score is None else f"{champion_score:.6f}",
        "gate_champion_version": champion_version or "",
        "gate_decision": "promoted" if promoted else "kept_champion",
        "gate_reason": reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promoted:
        if champion_version is not None:
            client.set_model_version_tag(name, version, PREVIOUS_TAG, str(champion_version))
        client.set_registered_model_alias(name, champion_alias, version)
        log.info("%s v%s is the new %s (%s)", name, version, champion_alias, reason)
    else:
        log.info("%s v%s not promoted (%s)", name, version, reason)
    return decision


def rollback(client: Any, name: str, champion_alias: str) -> dict[str, str]:
    """Move ``champion_alias`` back to the version it replaced (the ``previous_champion`` tag)."""
    current = version_by_alias(client, name, champion_alias)
    if current is None:
        raise RegistryError(f"{name} has no {champion_alias} to roll back")
    previous = (current.tags or {}).get(PREVIOUS_TAG)
    if not previous:
        raise RegistryError(f"{name} v{current.version} has no previous {champion_alias} to "
                            "roll back to")
    client.get_model_version(name, previous)  # fails loudly if it was deleted
    client.set_registered_model_alias(name, champion_alias, previous)
    client.set_model_version_tag(name, current.version, "rolled_back_to", previous)
    client.set_model_version_tag(name, previous, "restored_from", str(current.version))
    log.info("%s: %s rolled back from v%s to v%s", name, champion_alias, current.version,
             previous)
    return {"name": name, "from_version": str(current.version), "to_version": str(previous)}


def describe(client: Any, name: str, alias: str) -> dict[str, Any] | None:
    """The card, source, aliases and tags of the version ``alias`` points at (None when unset)."""
    version = version_by_alias(client, name, alias)
    if version is None:
        return None
    return {**ModelCard.from_version(name, version).as_dict(), "alias": alias,
            "source": version.source, "aliases": list(version.aliases or []),
            "tags": dict(version.tags or {})}
