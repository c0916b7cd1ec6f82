"""The training search scaled out: shares of one Optuna study in RDB storage (SQLite here; the
stack uses PostgreSQL), run concurrently, then the DAG's whole flow on a small real lake."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from chicago_crime import etl
from chicago_crime.devtools.seed import seed_window_from_exports
from chicago_crime.lake import Lake
from chicago_crime.model import shared_search, tune

MONTH = "2018-06"


def test_the_budget_is_split_without_empty_shares() -> None:
    assert shared_search.split_budget(12, 2) == [6, 6]
    assert shared_search.split_budget(5, 2) == [3, 2]
    assert shared_search.split_budget(2, 4) == [1, 1]
    assert shared_search.split_budget(1, 1) == [1]
    assert sum(shared_search.split_budget(13, 5)) == 13


def test_study_names_are_per_month_and_dag_run() -> None:
    a = shared_search.study_name("2018-06", "manual__2026-12-01T17:00:00+00:00")
    b = shared_search.study_name("2018-06", "scheduled__2026-12-01T17:00:00+00:00")
    assert a != b and a.startswith("train-2018-06-")


def _synthetic(rows: int = 900, seed: int = 0) -> tune.SearchData:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                      "c": rng.integers(0, 5, size=rows).astype(float)})
    y = (X["a"] + 0.5 * X["b"] + rng.normal(scale=0.8, size=rows) > 0.3).astype(int).to_numpy()
    newest = np.zeros(rows, dtype=bool)
    newest[-300:] = True
    return tune.SearchData(frames={"native": X, "native_interactions": X}, y=y, newest=newest)


def _wait_until_claimed(study: optuna.Study, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if time.monotonic() > deadline:
            raise TimeoutError("the enqueued trial was never claimed")
        time.sleep(0.05)


def test_two_processes_sharing_a_stored_study_run_the_budget_once(tmp_path: Path) -> None:
    """Two concurrent shares (threads, each with its own study object and sampler seed, as
    two workers would) against one SQLite-backed study: every trial has its own number, the
    budget is met exactly and each share ran its part."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    data = _synthetic()
    tune.open_study("shared", storage, 42, data.families)  # open_search's part
    shares = shared_search.split_budget(6, 2)
    barrier = threading.Barrier(len(shares))

    def share(index: int) -> int:
        study = tune.open_study("shared", storage, 42 + index, data.families)
        barrier.wait()
        if index:  # SQLite has no row locks (PostgreSQL has): two shares could claim the one
            _wait_until_claimed(study)  # enqueued trial together, so share 0 claims it first
        return tune.run_trials(study, data, n_trials=shares[index], timeout=None, folds=2,
                               log_to_mlflow=False, user_attrs={"share": index})

    with ThreadPoolExecutor(len(shares)) as pool:
        list(pool.map(share, range(len(shares))))
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["share"] for t in trials) == [0, 0, 0, 1, 1, 1]
    # the default configuration (enqueued once) ran once, not once per share
    default = tune.DEFAULT_TRIAL
    assert sum(t.params.get("learning_rate") == default["learning_rate"]
               and t.params.get("max_iter") == default["max_iter"] for t in trials) == 1
    # different seeds + constant liar: the shares did not sample the same points
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(points)) == len(points)


@pytest.fixture(scope="module")
def lake_month(moto_endpoint: str, shared_data: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ~4,000-record window through the real ETL stages (as tests/unit/test_train.py)."""
    from chicago_crime.config import load_settings

    tmp = tmp_path_factory.mktemp("shared-search")
    settings = load_settings(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        aws_endpoint_url_s3=moto_endpoint,
        data_repo_bucket_name=f"shared-search-{os.urandom(4).hex()}",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", search_trials=3,
        search_parallel_tasks=2, search_timeout_seconds=600,
        search_storage_url=f"sqlite:///{tmp}/optuna.db",
    )
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    seed_window_from_exports(lake, shared_data, MONTH, months=2, max_rows=5000)
    results = etl.run_all(MONTH, lake, settings)
    assert all(r["status"] == etl.OK for r in results.values()), results
    return {"settings": settings, "lake": lake}


def test_the_dags_search_flow_nests_every_trial_under_the_training_run(
        lake_month: dict[str, Any]) -> None:
    """open_search -> two concurrent shares -> finish, as train_model runs them; a retried
    share runs nothing more; the training continues the parent run."""
    settings, lake = lake_month["settings"], lake_month["lake"]
    shares = shared_search.open_search(MONTH, "manual__unit", settings, lake)
    assert [s["trials"] for s in shares] == [2, 1]
    assert len({s["run_id"] for s in shares}) == 1
    # a retried open_search finds the same run and study
    again = shared_search.open_search(MONTH, "manual__unit", settings, lake)
    assert again == shares
    study = optuna.load_study(study_name=shares[0]["study_name"],
                              storage=settings.search_storage())
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(shared_search.run_share, shares[0], settings, lake)
        # SQLite has no row locks (PostgreSQL has): both shares could claim the enqueued
        # default trial together (then one tells a COMPLETE trial), so share 0 claims it first
        _wait_until_claimed(study)
        second = pool.submit(shared_search.run_share, shares[1], settings, lake)
        ran = [first.result(), second.result()]
    assert [r["trials"] for r in ran] == [2, 1]
    retry = shared_search.run_share(shares[1], settings, lake)
    assert retry["resumed_from"] == 1 and retry["trials"] == 1
    study = optuna.load_study(study_name=shares[0]["study_name"],
                              storage=settings.search_storage())
    assert len(study.trials) == 3

    result = shared_search.finish(shares[0], settings)
    run_id = shares[0]["run_id"]
    assert result["run_id"] == run_id and result["trials"] == 3
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search_trials"] == "3"
    assert parent.data.tags["registered_version"] == str(result["version"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(int(c.data.tags["trial"]) for c in children) == [0, 1, 2]
    assert parent.data.metrics["search_trials_completed"] == 3
