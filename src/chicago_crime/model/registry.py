"""The MLflow model registry: versions, the ``challenger``/``champion`` aliases, the gate, rollback.

* Every trained model is registered as a new version of ``settings.model_name`` and gets the
  alias ``challenger``.
* :func:`gate` scores the challenger and the current champion on the *same* records (the new
  month's test split) and moves ``champion`` only when the challenger is better on
  ``settings.primary_metric`` by more than ``settings.promotion_margin``. Ties and smaller gains
  keep the champion; the first model becomes champion. The decision and both scores are
  recorded as tags of the new version (``gate_*``).
* A promoted version remembers the version it replaced in the tag ``previous_champion``;
  :func:`rollback` moves ``champion`` back along that chain (the rolled-back version is tagged
  ``rolled_back_to``, the restored one ``restored_from``).

Retraining the same month on the same data scores the same as the champion, so the gate keeps
the champion: reruns never promote a second version.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from chicago_crime.config import Settings, get_settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "previous_champion"


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs (no champion, no previous one)."""


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


def client_for(settings: Settings | None = None) -> Any:
    """An ``MlflowClient`` on the platform's tracking server and registry."""
    from mlflow import MlflowClient

    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.mlflow_tracking_uri, registry_uri=s.mlflow_tracking_uri)


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None (no model / no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def register(client: Any, name: str, model_uri: str, run_id: str, model_id: str | None = None,
             tags: dict[str, str] | None = None, wait_seconds: float = 300) -> Any:
    """Register ``model_uri`` as a new version of ``name`` and point ``challenger`` at it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="Calibrated probability that a reported Chicago crime ends in "
                              "an arrest, from a raw Chicago Data Portal record.")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=model_uri, run_id=run_id,
                                          tags={k: str(v) for k, v in (tags or {}).items()},
                                          model_id=model_id)
    deadline = time.monotonic() + wait_seconds
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(name, version.version)
    if version.status != "READY":
        raise RegistryError(f"{name} version {version.version} is {version.status}")
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    log.info("registered %s version %s (alias %s)", name, version.version, CHALLENGER)
    return version


def load_version(name: str, version: str) -> Any:
    """Load one registered version with the sklearn flavour (the platform trusts its registry)."""
    import mlflow.sklearn

    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


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
         metric: str, margin: float, challenger_model: Any | None = None,
         load: Callable[[str, str], Any] = load_version) -> GateDecision:
    """Score champion and challenger with ``score(model)``; move ``champion`` if earned.

    ``score`` maps a loaded model to the primary metric on the current test records (higher
    is better). ``challenger_model`` avoids reloading the just-trained model.
    """
    version = str(version)
    champion = version_by_alias(client, name, CHAMPION)
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
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("%s v%s is the new champion (%s)", name, version, reason)
    else:
        log.info("%s v%s not promoted (%s)", name, version, reason)
    return decision


def rollback(client: Any, name: str) -> dict[str, str]:
    """Move ``champion`` back to the version it replaced (the ``previous_champion`` tag)."""
    current = version_by_alias(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = (current.tags or {}).get(PREVIOUS_TAG)
    if not previous:
        raise RegistryError(f"{name} v{current.version} has no previous champion to roll back to")
    client.get_model_version(name, previous)  # fails loudly if it was deleted
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "rolled_back_to", previous)
    client.set_model_version_tag(name, previous, "restored_from", str(current.version))
    log.info("%s: champion rolled back from v%s to v%s", name, current.version, previous)
    return {"name": name, "from_version": str(current.version), "to_version": str(previous)}


def describe(client: Any, name: str, alias: str = CHAMPION) -> dict[str, Any] | None:
    """Version, run and tags of the version ``alias`` points at (None when unset)."""
    version = version_by_alias(client, name, alias)
    if version is None:
        return None
    return {"name": name, "alias": alias, "version": str(version.version),
            "run_id": version.run_id, "source": version.source,
            "tags": dict(version.tags or {}), "aliases": list(version.aliases or [])}
