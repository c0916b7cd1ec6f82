"""The training DAG's search, scaled out: mapped Airflow tasks sharing one Optuna study.

``train_model`` runs :func:`open_search` once (the month's data is checked, the parent MLflow
run and the study are created), then one mapped task per share (:func:`run_share`) on
whatever Celery worker takes it, then :func:`finish` (the best trial of the study goes to
:func:`~chicago_crime.model.train.run_training`, which continues the parent run).

* The study lives in PostgreSQL (Optuna's RDB storage, ``Settings.search_storage()``:
  ``PG_SEARCH_DB``), so any worker that reaches the database, on this host or another one,
  takes part; Optuna gives each trial its own number in a transaction.
* The trial budget ``SEARCH_TRIALS`` is split into ``SEARCH_PARALLEL_TASKS`` shares (no empty
  share); each share's sampler has its own seed (``RANDOM_SEED`` + share) and TPE's constant
  liar, so concurrent shares do not sample the same point.
* Each trial is a nested MLflow run under the training run (``parent_run_id``), whichever
  process runs it.
* The study is named after the month and the DAG run (:func:`study_name`): a new DAG run
  starts a fresh study; a retried task finds its study, its parent run and the trials its
  share already completed (tagged with the share), and runs only the rest.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.model import tune

log = logging.getLogger(__name__)

#: MLflow tag of the training run that names its shared study.
STUDY_TAG = "search_study"
#: Trial user attribute: the share that ran it.
SHARE_ATTR = "share"


def study_name(month: str, dag_run_id: str) -> str:
    """One study per month and DAG run (Optuna accepts any text; kept readable)."""
    return f"train-{month}-{re.sub(r'[^A-Za-z0-9_.:+-]', '_', dag_run_id)}"[:500]


def split_budget(trials: int, tasks: int) -> list[int]:
    """``trials`` in at most ``tasks`` shares differing by one at most, none empty."""
    tasks = max(1, min(tasks, trials))
    base, extra = divmod(trials, tasks)
    return [base + (1 if i < extra else 0) for i in range(tasks)]


def _mlflow(settings: Settings) -> Any:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.search_experiment)
    return mlflow


def _parent_run(settings: Settings, month: str, name: str) -> str:
    """The training run of this study: found again on a retry, else created (left RUNNING:
    the shares nest their trials under it, ``run_training`` continues and ends it)."""
    mlflow = _mlflow(settings)
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(settings.search_experiment)
    found = client.search_runs([experiment.experiment_id],
                               filter_string=f"tags.{STUDY_TAG} = '{name}'", max_results=1)
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment.experiment_id, run_name=f"train-{month}",
                            tags={"kind": "training", "month": month, STUDY_TAG: name,
                                  "search_shared": "true"})
    return run.info.run_id


def open_search(month: str, dag_run_id: str, settings: Settings | None = None,
                lake: Lake | None = None, *,
                search_max_rows: int | None = tune.SEARCH_MAX_ROWS) -> list[dict[str, Any]]:
    """Check the month's data, create the parent run and the study (default trials enqueued)
    and return one small dict per share (the mapped tasks' arguments)."""
    from chicago_crime.model.train import load_month, search_data

    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    data = search_data(load_month(month, lake, settings), search_max_rows,
                       settings.random_seed)  # TrainingDataMissing before any fan-out
    name = study_name(month, dag_run_id)
    storage = settings.search_storage()
    study = tune.open_study(name, storage, settings.random_seed, data.families)
    if "started" not in study.user_attrs:
        study.set_user_attr("started", time.time())
        study.set_user_attr("rows", len(data.y))
        study.set_user_attr("temporal", data.newest is not None)
        study.set_user_attr("budget", settings.search_trials)
    run_id = _parent_run(settings, month, name)
    shares = split_budget(settings.search_trials, settings.search_parallel_tasks)
    log.info("study %s: %d trials in %d shares %s, parent run %s", name, sum(shares),
             len(shares), shares, run_id)
    return [{"month": month, "study_name": name, "run_id": run_id, "share": i,
             "trials": n, "search_max_rows": search_max_rows}
            for i, n in enumerate(shares)]


def _completed_by(study: Any, share: int) -> int:
    import optuna

    return sum(1 for t in study.get_trials(deepcopy=False,
                                           states=(optuna.trial.TrialState.COMPLETE,))
               if t.user_attrs.get(SHARE_ATTR) == share)


def run_share(share: dict[str, Any], settings: Settings | None = None,
              lake: Lake | None = None) -> dict[str, Any]:
    """Run one share of the study's trials here (a mapped task, on any worker); returns
    what it ran and where."""
    from chicago_crime.model.train import load_month, search_data

    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    started = time.perf_counter()
    data = search_data(load_month(share["month"], lake, settings), share["search_max_rows"],
                       settings.random_seed)
    index = int(share["share"])
    study = tune.open_study(share["study_name"], settings.search_storage(),
                            settings.random_seed + index, data.families)
    done = _completed_by(study, index)
    todo = int(share["trials"]) - done
    if todo > 0:
        _mlflow(settings)
        tune.run_trials(study, data, n_trials=todo, timeout=settings.search_timeout_seconds,
                        folds=settings.cv_folds, seed=settings.random_seed,
                        parent_run_id=share["run_id"], user_attrs={SHARE_ATTR: index})
    else:
        log.info("share %d already ran its %d trials (a retry)", index, done)
    return {"share": index, "trials": _completed_by(study, index), "resumed_from": done,
            "host": socket.gethostname(), "seconds": round(time.perf_counter() - started, 1)}


@dataclass
class _Rows:
    """What :func:`tune.search_result` reads of the search data (size, objective)."""

    y: np.ndarray
    newest: Any


def load_result(name: str, settings: Settings | None = None) -> tune.SearchResult:
    """The shared study's outcome (best complete trial, one row per complete trial); its
    seconds run from the study's creation to now."""
    import optuna

    settings = settings or get_settings()
    study = optuna.load_study(study_name=name, storage=settings.search_storage())
    attrs = study.user_attrs
    rows = _Rows(np.zeros(int(attrs.get("rows", 0))), True if attrs.get("temporal") else None)
    return tune.search_result(study, rows,  # type: ignore[arg-type]
                              seconds=time.time() - float(attrs.get("started", time.time())))


def finish(share: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Train on the study's best configuration, continuing the parent run."""
    from chicago_crime.model.train import run_training

    settings = settings or get_settings()
    result = load_result(share["study_name"], settings)
    return run_training(share["month"], settings, trials=settings.search_trials,
                        search_max_rows=share["search_max_rows"], search=result,
                        run_id=share["run_id"])
