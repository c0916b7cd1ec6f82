"""The metric gate and rollback on a real MLflow registry (SQLite backend)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from chicago_crime import cli
from chicago_crime.model import evaluate as ev
from chicago_crime.model import registry

RNG = np.random.default_rng(7)
CHAMPION = "champion"  # the default of Settings.champion_alias
Y = (RNG.random(2000) < 0.2).astype(int)


class Scores:
    """A stand-in model whose probabilities have a chosen ranking quality."""

    def __init__(self, noise: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.p = 1 / (1 + np.exp(-(3 * Y - 1.5 + rng.normal(0, noise, len(Y)))))

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.column_stack([1 - self.p, self.p])


def _score(model: Any) -> float:
    return ev.gate_score("roc_auc", Y, model.predict_proba(None)[:, 1])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow database for the module (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"


@pytest.fixture
def reg(db: str) -> dict[str, Any]:
    """A fresh registered-model name per test on the shared database."""
    client = MlflowClient(tracking_uri=db, registry_uri=db)
    return {"client": client, "models": {}, "uri": db, "name": f"gate_{uuid.uuid4().hex[:8]}"}


def _train(reg: dict[str, Any], model: Any, margin: float = 0.002, *,
           window_end: str | None = None, load: Any = None,
           newer: Any = None) -> registry.GateDecision:
    """Register ``model`` as a new version (with a card ending at ``window_end``) and run the
    gate (the trainer's sequence)."""
    client = reg["client"]
    experiment = client.get_experiment_by_name("gate") or client.get_experiment(
        client.create_experiment("gate"))
    run = client.create_run(experiment.experiment_id)
    card = None if window_end is None else registry.ModelCard(
        name=reg["name"], threshold=0.5, window_start="2017-01-01", window_end=window_end)
    version = registry.register(client, reg["name"], f"runs:/{run.info.run_id}/model",
                                run.info.run_id, card)
    reg["models"][str(version.version)] = model
    return registry.gate(client, reg["name"], version.version, _score, champion_alias=CHAMPION,
                         metric="roc_auc", margin=margin, challenger_model=model,
                         load=load or (lambda name, v: reg["models"][str(v)]), newer=newer)


def _alias(reg: dict[str, Any], alias: str) -> str:
    return str(reg["client"].get_model_version_by_alias(reg["name"], alias).version)


def test_first_model_becomes_champion(reg: dict[str, Any]) -> None:
    decision = _train(reg, Scores(noise=1.0))
    assert decision.promoted and decision.champion_score is None
    assert _alias(reg, "champion") == _alias(reg, "challenger") == "1"
    tags = reg["client"].get_model_version(reg["name"], "1").tags
    assert tags["gate_decision"] == "promoted" and tags["gate_champion_score"] == ""
    assert registry.PREVIOUS_TAG not in tags


def test_worse_challenger_does_not_move_champion(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=1.0))
    decision = _train(reg, Scores(noise=3.0))
    assert not decision.promoted
    assert decision.challenger_score < decision.champion_score
    assert _alias(reg, "champion") == "1" and _alias(reg, "challenger") == "2"
    tags = reg["client"].get_model_version(reg["name"], "2").tags
    assert tags["gate_decision"] == "kept_champion"
    assert float(tags["gate_champion_score"]) == pytest.approx(decision.champion_score, abs=1e-6)
    assert float(tags["gate_challenger_score"]) == pytest.approx(decision.challenger_score,
                                                                  abs=1e-6)
    assert tags["gate_champion_version"] == "1"


def test_better_challenger_becomes_champion(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=3.0))
    decision = _train(reg, Scores(noise=1.0))
    assert decision.promoted and decision.challenger_score > decision.champion_score + 0.002
    assert _alias(reg, "champion") == "2"
    assert reg["client"].get_model_version(reg["name"], "2").tags[registry.PREVIOUS_TAG] == "1"


def test_tie_keeps_champion(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=1.0, seed=3))
    decision = _train(reg, Scores(noise=1.0, seed=3))
    assert not decision.promoted and decision.challenger_score == decision.champion_score
    assert "tie" in decision.reason
    assert _alias(reg, "champion") == "1"


def test_gain_within_margin_keeps_champion(reg: dict[str, Any]) -> None:
    first = _train(reg, Scores(noise=2.0, seed=1))
    second = Scores(noise=2.0, seed=2)
    gain = _score(second) - first.challenger_score
    decision = _train(reg, second, margin=abs(gain) + 0.01)
    assert not decision.promoted and _alias(reg, "champion") == "1"


def test_unloadable_champion_is_kept_and_the_gate_fails(reg: dict[str, Any]) -> None:
    """Fail closed: a champion that cannot be scored is not a reason to promote."""
    _train(reg, Scores(noise=1.0))
    reg["models"]["1"] = object()  # predict_proba missing: cannot be scored
    with pytest.raises(registry.GateError, match="scoring the champion v1"):
        _train(reg, Scores(noise=0.5))
    assert _alias(reg, "champion") == "1"
    tags = reg["client"].get_model_version(reg["name"], "2").tags
    assert tags["gate_decision"] == "error"
    assert "AttributeError" in tags["gate_error"] and "champion is kept" in tags["gate_reason"]
    assert registry.PREVIOUS_TAG not in tags


def test_registry_timeout_while_loading_the_champion_keeps_it(reg: dict[str, Any]) -> None:
    """The review's repro: an S3/MLflow timeout loading the champion promoted the challenger."""
    _train(reg, Scores(noise=3.0))

    def load(name: str, version: str) -> Any:
        raise TimeoutError("s3 read timed out")

    with pytest.raises(registry.GateError, match="TimeoutError: s3 read timed out"):
        _train(reg, Scores(noise=0.5), load=load)
    assert _alias(reg, "champion") == "1"
    assert reg["client"].get_model_version(reg["name"], "2").tags["gate_decision"] == "error"


def test_error_scoring_the_challenger_keeps_the_champion(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=3.0))
    with pytest.raises(registry.GateError, match="scoring the challenger"):
        _train(reg, object())
    assert _alias(reg, "champion") == "1"


def test_older_window_is_never_promoted_automatically(reg: dict[str, Any]) -> None:
    """A backfill of an older month registers a better-scoring version, champion unchanged."""
    _train(reg, Scores(noise=3.0), window_end="2018-06-30")
    loads: list[str] = []

    def load(name: str, version: str) -> Any:
        loads.append(version)
        return reg["models"][version]

    decision = _train(reg, Scores(noise=0.5), window_end="2018-05-31", load=load,
                      newer=lambda after: pytest.fail("no comparison for an older window"))
    assert not decision.promoted and decision.challenger_score is not None
    assert "2018-05-31" in decision.reason and "2018-06-30" in decision.reason
    assert loads == []  # the champion is not even scored
    assert _alias(reg, "champion") == "1" and _alias(reg, "challenger") == "2"
    tags = reg["client"].get_model_version(reg["name"], "2").tags
    assert tags["gate_decision"] == "kept_champion"
    assert "never promoted automatically" in tags["gate_reason"]


def test_same_or_newer_window_still_competes(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=3.0), window_end="2018-05-31")
    assert _train(reg, Scores(noise=2.0), window_end="2018-06-30").promoted
    assert _train(reg, Scores(noise=1.0), window_end="2018-06-30").promoted
    assert _alias(reg, "champion") == "3"


def test_records_newer_than_both_windows_decide(reg: dict[str, Any]) -> None:
    """When the lake has records after both windows, both models are scored on those."""
    good_old, good_new = Scores(noise=0.5, seed=1), Scores(noise=3.0, seed=2)
    _train(reg, good_old, window_end="2018-04-30")
    asked: list[str] = []

    def newer(after: str) -> registry.Evaluation:
        asked.append(after)
        # on the newer records the challenger ranks better (its scores reversed here)
        return registry.Evaluation(lambda m: 1.0 if m is good_new else 0.5,
                                   "1000 records of 2018-06's test split dated after 2018-05-31")

    decision = _train(reg, good_new, window_end="2018-05-31", newer=newer)
    assert asked == ["2018-05-31"]
    assert decision.promoted and decision.challenger_score == 1.0
    assert decision.champion_score == 0.5
    assert decision.evaluated_on.startswith("1000 records of 2018-06")
    tags = reg["client"].get_model_version(reg["name"], "2").tags
    assert tags["gate_evaluation"] == decision.evaluated_on


def test_without_newer_records_the_in_window_test_decides(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=1.0), window_end="2018-05-31")
    decision = _train(reg, Scores(noise=3.0), window_end="2018-06-30",
                      newer=lambda after: None)
    assert not decision.promoted and decision.evaluated_on == registry.IN_WINDOW


def test_error_choosing_newer_records_fails_closed(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=3.0), window_end="2018-05-31")

    def newer(after: str) -> registry.Evaluation:
        raise OSError("lake unreachable")

    with pytest.raises(registry.GateError, match="newer than both windows"):
        _train(reg, Scores(noise=0.5), window_end="2018-06-30", newer=newer)
    assert _alias(reg, "champion") == "1"


def test_rollback_walks_back_the_champion_history(reg: dict[str, Any]) -> None:
    client = reg["client"]
    _train(reg, Scores(noise=3.0))
    _train(reg, Scores(noise=2.0))
    _train(reg, Scores(noise=1.0))
    assert _alias(reg, "champion") == "3"
    assert registry.rollback(client, reg["name"], CHAMPION) == {
        "name": reg["name"], "from_version": "3", "to_version": "2"}
    assert _alias(reg, "champion") == "2"
    assert client.get_model_version(reg["name"], "3").tags["rolled_back_to"] == "2"
    assert client.get_model_version(reg["name"], "2").tags["restored_from"] == "3"
    registry.rollback(client, reg["name"], CHAMPION)
    assert _alias(reg, "champion") == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(client, reg["name"], CHAMPION)
    assert _alias(reg, "champion") == "1"


def test_rollback_without_champion_fails(reg: dict[str, Any]) -> None:
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(reg["client"], reg["name"], CHAMPION)


@pytest.mark.parametrize(("challenger", "champion", "promoted"), [
    (0.90, None, True), (0.90, 0.90, False), (0.9015, 0.90, False), (0.9025, 0.90, True),
    (0.85, 0.90, False),
])
def test_decide(challenger: float, champion: float | None, promoted: bool) -> None:
    assert registry.decide(challenger, champion, 0.002)[0] is promoted


@pytest.mark.parametrize(("challenger_end", "champion_end", "promoted"), [
    ("2018-05-31", "2018-06-30", False), ("2018-06-30", "2018-06-30", True),
    ("2018-07-31", "2018-06-30", True), (None, "2018-06-30", True),
])
def test_decide_by_window(challenger_end: str | None, champion_end: str, promoted: bool,
                          ) -> None:
    """A much better score never promotes a challenger trained on older data."""
    ok, reason = registry.decide(0.99, 0.5, 0.002, challenger_end=challenger_end,
                                 champion_end=champion_end)
    assert ok is promoted
    assert ("older data" in reason) is (not promoted)


def test_cli_champion_shows_why_the_latest_version_was_not_promoted(
        reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg["uri"])
    monkeypatch.setenv("MODEL_NAME", reg["name"])
    _train(reg, Scores(noise=3.0), window_end="2018-06-30")
    _train(reg, Scores(noise=0.5), window_end="2018-05-31")
    assert cli.main(["champion"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "1" and shown["gate"]["decision"] == "promoted"
    latest = shown["latest_challenger"]
    assert latest["version"] == "2" and latest["decision"] == "kept_champion"
    assert "older data" in latest["reason"]


def test_cli_rollback_and_champion(reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg["uri"])
    monkeypatch.setenv("MODEL_NAME", reg["name"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # required; no .env needed
        monkeypatch.setenv(name, "testing")
    assert cli.main(["champion"]) == 1
    assert "no champion" in capsys.readouterr().err
    _train(reg, Scores(noise=3.0))
    _train(reg, Scores(noise=1.0))
    assert cli.main(["rollback"]) == 0
    assert '"to_version": "1"' in capsys.readouterr().out
    assert cli.main(["rollback"]) == 1
    assert _alias(reg, "champion") == "1"


def test_model_card_round_trips_through_version_tags(reg: dict[str, Any]) -> None:
    client = reg["client"]
    experiment = client.get_experiment_by_name("gate") or client.get_experiment(
        client.create_experiment("gate"))
    run = client.create_run(experiment.experiment_id)
    card = registry.ModelCard(
        name=reg["name"], run_id=run.info.run_id, threshold=0.4123456789,
        features=("iucr_te", "log1p_dist_to_station_ft"), month="2018-06",
        window_start="2017-07-01", window_end="2018-06-30",
        metrics={"roc_auc": 0.8912345678, "ece": float("nan")}, calibration="isotonic",
        model_family="hgb", balanced=False)
    version = registry.register(client, reg["name"], f"runs:/{run.info.run_id}/model",
                                run.info.run_id, card)
    client.set_registered_model_alias(reg["name"], CHAMPION, version.version)
    back = registry.card(client, reg["name"], CHAMPION)
    assert back == registry.ModelCard(
        name=reg["name"], run_id=run.info.run_id, version=str(version.version),
        threshold=0.412346, features=card.features, month="2018-06",
        window_start="2017-07-01", window_end="2018-06-30", metrics={"roc_auc": 0.891235},
        calibration="isotonic", model_family="hgb", balanced=False)
    assert registry.card(client, reg["name"], "no-such-alias") is None
    described = registry.describe(client, reg["name"], CHAMPION)
    assert described["threshold"] == back.threshold and described["alias"] == CHAMPION


def test_a_version_without_a_card_reads_back_empty(reg: dict[str, Any]) -> None:
    _train(reg, Scores(noise=1.0))
    card = registry.card(reg["client"], reg["name"], CHAMPION)
    assert card is not None and card.version == "1"
    assert card.threshold is None and card.features == () and card.metrics == {}


class _DeniedClient:
    """An MLflow client signed in with an account that has no grant on the model: the server
    answers 403 for its alias, whether or not the model exists."""

    def __init__(self, visible: list[str]) -> None:
        self.visible = visible

    def get_model_version_by_alias(self, name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        raise MlflowException("API request to endpoint /api/2.0/mlflow/registered-models/alias "
                              "failed with error code 403 != 200. Response body: "
                              "'Permission denied'")

    def search_registered_models(self, filter_string: str, max_results: int) -> list[str]:
        return [n for n in self.visible if f"'{n}'" in filter_string][:max_results]


def test_a_403_for_a_model_nobody_registered_means_no_champion_yet() -> None:
    from mlflow.exceptions import MlflowException

    from chicago_crime.model import registry

    assert registry.version_by_alias(_DeniedClient([]), "fresh", "champion") is None
    with pytest.raises(MlflowException, match="403"):  # it exists: a real permission problem
        registry.version_by_alias(_DeniedClient(["fresh"]), "fresh", "champion")
