"""The MLflow model registry: the model card, versions, aliases, the gate and rollback.

Every registry look-up of the platform goes through this module (the trainer, the CLI, the
model server, the notebooks): the client, alias resolution and what "not found" means.

* Every trained model is registered as a new version of ``settings.model_name`` with its
  :class:`ModelCard` written once as version tags, and gets the alias ``challenger``.
* :func:`gate` scores the challenger and the current champion on the *same* records and moves
  the champion alias (``settings.champion_alias``) only when :func:`decide` says so: the
  first model becomes champion; a challenger whose data window ends before the champion's is
  never promoted automatically (a backfill of an older month); otherwise the challenger must
  be better on ``settings.primary_metric`` by more than ``settings.promotion_margin`` (ties
  and smaller gains keep the champion). The records are the challenger's test split, or,
  when the lake has records dated after both windows, those (neither model trained on them).
  The decision, its reason, the records and both scores are recorded as tags of the new
  version (``gate_*``); ``chicago-crime champion`` (``make champion``) shows them.
* The gate fails closed: an error while scoring either model keeps the champion, tags the
  version ``gate_decision=error`` with ``gate_error``, and raises :class:`GateError` (the
  training task fails).
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
        # MLflow's auth answers 403 (not 404) when an account without a grant on it asks for a
        # model that does not exist yet (a fresh platform before its first training): a model
        # this account cannot even list is, for it, not registered.
        if _permission_denied(exc) and not client.search_registered_models(
                filter_string=f"name = '{name}'", max_results=1):
            return None
        raise


def _permission_denied(exc: BaseException) -> bool:
    return (getattr(exc, "error_code", "") == "PERMISSION_DENIED"
            or "error code 403" in str(exc))


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


class GateError(RuntimeError):
    """The gate could not score a model: the champion is kept, the version is tagged
    ``gate_error`` and the caller (the training task) fails."""


#: ``gate_decision`` tag values.
PROMOTED, KEPT, ERROR = "promoted", "kept_champion", "error"
#: How the gate describes the default evaluation data (the challenger's own test split).
IN_WINDOW = "the challenger's in-window test split"


@dataclass(frozen=True)
class Evaluation:
    """Records both models are scored on: ``score(model)`` is the primary metric (higher is
    better) and ``description`` says which records they are (kept in the ``gate_evaluation``
    tag)."""

    score: Callable[[Any], float]
    description: str = IN_WINDOW


@dataclass
class GateDecision:
    """What :func:`gate` decided (also recorded as ``gate_*`` version tags)."""

    version: str
    promoted: bool
    reason: str
    metric: str
    margin: float
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    evaluated_on: str = IN_WINDOW
    error: str | None = None

    @property
    def outcome(self) -> str:
        """The ``gate_decision`` tag: promoted, kept_champion or error."""
        return ERROR if self.error else PROMOTED if self.promoted else KEPT

    def tags(self) -> dict[str, str]:
        """The decision as version tags."""
        def num(value: float | None) -> str:
            return "" if value is None else f"{value:.6f}"

        out = {
            "gate_metric": self.metric, "gate_margin": f"{self.margin:g}",
            "gate_challenger_score": num(self.challenger_score),
            "gate_champion_score": num(self.champion_score),
            "gate_champion_version": self.champion_version or "",
            "gate_decision": self.outcome, "gate_reason": self.reason,
            "gate_evaluation": self.evaluated_on,
        }
        if self.error:
            out["gate_error"] = self.error
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}


def decide(challenger_score: float | None, champion_score: float | None, margin: float, *,
           challenger_end: str | None = None, champion_end: str | None = None,
           has_champion: bool | None = None) -> tuple[bool, str]:
    """The promotion rule, the one place it is written.

    * no champion yet: the first model becomes champion;
    * a challenger whose data window ends before the champion's (``*_end``, ``YYYY-MM-DD``)
      is never promoted automatically: a backfill of an older month must not replace a model
      trained on newer data (promote it by hand with the alias if that is really wanted);
    * otherwise promote only when the challenger beats the champion by more than ``margin``.
    """
    if has_champion is None:
        has_champion = champion_score is not None
    if not has_champion:
        return True, "no champion yet: the first model becomes champion"
    if challenger_end and champion_end and challenger_end < champion_end:
        return False, (f"older data: the challenger's window ends {challenger_end}, before the "
                       f"champion's ({champion_end}); never promoted automatically")
    if challenger_score is None or champion_score is None:
        raise ValueError("both scores are needed to compare a challenger with a champion")
    gain = challenger_score - champion_score
    if gain > margin:
        return True, f"challenger better by {gain:.6f} > margin {margin:g}"
    if gain == 0:
        return False, "tie: the champion is kept"
    return False, f"gain {gain:.6f} <= margin {margin:g}: the champion is kept"


def _error_text(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def gate(client: Any, name: str, version: str, score: Callable[[Any], float] | Evaluation, *,
         champion_alias: str, metric: str, margin: float, challenger_model: Any | None = None,
         load: Callable[[str, str], Any] = load_version,
         newer: Callable[[str], Evaluation | None] | None = None) -> GateDecision:
    """Decide whether ``version`` replaces the champion; move ``champion_alias`` if earned.

    ``score`` maps a loaded model to the primary metric on the challenger's test records
    (higher is better). ``newer(after)``, when given, returns records dated after ``after``
    (the later of both windows' last days), which neither model trained on; when it returns
    some, both are scored on them instead. ``challenger_model`` avoids reloading the
    just-trained model.

    Fails closed: any error while scoring keeps the champion, tags the version with
    ``gate_decision=error`` and ``gate_error``, and raises :class:`GateError`.
    """
    version = str(version)
    evaluation = score if isinstance(score, Evaluation) else Evaluation(score)
    champion = version_by_alias(client, name, champion_alias)
    champion_version = None if champion is None else str(champion.version)
    challenger_end = ModelCard.from_version(name, client.get_model_version(name, version)
                                            ).window_end
    champion_end = None if champion is None else ModelCard.from_version(name, champion
                                                                        ).window_end
    decision = GateDecision(version=version, promoted=False, reason="", metric=metric,
                            margin=margin, challenger_score=None,
                            champion_version=champion_version, champion_score=None,
                            evaluated_on=evaluation.description)
    step = "scoring the challenger"
    try:
        if champion_version == version:
            decision.challenger_score = float(evaluation.score(
                challenger_model if challenger_model is not None else load(name, version)))
            decision.champion_score = decision.challenger_score
            decision.reason = "this version is already the champion"
        else:
            older = bool(challenger_end and champion_end and challenger_end < champion_end)
            if newer is not None and champion is not None and challenger_end and champion_end \
                    and not older:
                step = "choosing records newer than both windows"
                later = newer(max(challenger_end, champion_end))
                if later is not None:
                    evaluation = later
                    decision.evaluated_on = later.description
            step = "scoring the challenger"
            decision.challenger_score = float(evaluation.score(
                challenger_model if challenger_model is not None else load(name, version)))
            if champion is not None and not older:
                step = f"scoring the champion v{champion_version}"
                decision.champion_score = float(evaluation.score(load(name, champion_version)))
            step = "deciding"
            decision.promoted, decision.reason = decide(
                decision.challenger_score, decision.champion_score, margin,
                challenger_end=challenger_end, champion_end=champion_end,
                has_champion=champion is not None)
    except Exception as exc:  # fail closed: nothing is promoted on an error
        decision.promoted = False
        decision.error = _error_text(exc)
        decision.reason = f"error while {step}: the champion is kept ({decision.error})"
        log.error("%s v%s: %s", name, version, decision.reason, exc_info=True)
        _tag(client, name, version, decision.tags())
        raise GateError(f"{name} v{version}: {decision.reason}") from exc
    _tag(client, name, version, decision.tags())
    if decision.promoted:
        if champion_version is not None:
            client.set_model_version_tag(name, version, PREVIOUS_TAG, champion_version)
        client.set_registered_model_alias(name, champion_alias, version)
        log.info("%s v%s is the new %s (%s)", name, version, champion_alias, decision.reason)
    else:
        log.info("%s v%s not promoted (%s)", name, version, decision.reason)
    return decision


def _tag(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def last_decision(version: Any) -> dict[str, str]:
    """The ``gate_*`` tags of a version (its gate decision, reason and scores), unprefixed."""
    tags = dict(getattr(version, "tags", None) or {})
    return {k.removeprefix("gate_"): v for k, v in sorted(tags.items()) if k.startswith("gate_")}


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
    """The card, source, aliases and tags of the version ``alias`` points at (None when unset),
    with its gate decision (``gate``) and, when the newest version (``challenger``) is another
    one, that version's decision too (``latest_challenger``: why it did or did not replace
    the champion)."""
    version = version_by_alias(client, name, alias)
    if version is None:
        return None
    out = {**ModelCard.from_version(name, version).as_dict(), "alias": alias,
           "source": version.source, "aliases": list(version.aliases or []),
           "gate": last_decision(version), "tags": dict(version.tags or {})}
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) != str(version.version):
        out["latest_challenger"] = {"version": str(challenger.version),
                                    **last_decision(challenger)}
    return out
