"""train_model on the native stack, one manual run for a processed month checked twice: the gate
(a tie on the same month does not move the champion) and the search scaled out (the mapped
``search_trials`` tasks ran on both Celery workers with AIRFLOW_WORKERS=2, shared one Optuna
study in PostgreSQL and logged one nested MLflow run per trial under the training run).

On a fresh stack (CI) this run registers the first champion (the integration conftest runs this
module first); the tie on a retrained month is also checked in ``tests/unit/test_train.py``.
One run serves both checks: a training run is the slowest thing the suite does (~3.5 min)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import optuna
import pytest
from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody

from chicago_crime import layout
from chicago_crime.devtools import stack
from chicago_crime.devtools.airflow_api import Airflow, connect, wait_for_dag, wait_for_run
from chicago_crime.devtools.demo import run_etl
from chicago_crime.lake import Lake
from chicago_crime.model import registry, shared_search

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

MONTH = "2018-06"
DAG = "train_model"


@dataclass
class ManualRun:
    """A finished manual ``train_model`` run and what ``train_and_register`` returned."""

    af: Airflow
    run_id: str
    result: dict[str, Any]


@pytest.fixture(scope="module")
def manual_run(stack_settings) -> ManualRun:
    """Process the month if needed (the ETL DAG test usually did), then train it by hand."""
    af = connect(stack_settings)
    if not Lake(settings=stack_settings).exists(layout.fitted_key(MONTH, "select")):
        wait_for_dag(af, "etl_with_taskflow")
        af.dags.patch_dag("etl_with_taskflow", DAGPatchBody(is_paused=False))
        run_etl(af, MONTH)
    wait_for_dag(af, DAG)
    af.dags.patch_dag(DAG, DAGPatchBody(is_paused=False))
    run_id = f"manual__test_{uuid.uuid4().hex[:8]}"
    af.dag_runs.trigger_dag_run(DAG, TriggerDAGRunPostBody(dag_run_id=run_id,
                                                           conf={"month": MONTH}))
    run = wait_for_run(af, DAG, run_id, timeout=1800)
    assert run.state == "success", run.state
    result = af.xcom.get_xcom_entry(DAG, "train_and_register", run_id,
                                    "return_value").actual_instance.value
    return ManualRun(af, run_id, result)


def test_manual_training_of_a_processed_month(manual_run, stack_settings):
    result = manual_run.result
    assert result["month"] == MONTH and result["version"]
    mlflow_client = registry.client_for(stack_settings)
    name = stack_settings.model_name
    version = mlflow_client.get_model_version(name, str(result["version"]))
    assert "challenger" in version.aliases or result["promoted"]
    assert version.tags["gate_decision"] in {"promoted", "kept_champion"}
    champion = registry.version_by_alias(mlflow_client, name, "champion")
    assert champion is not None
    if not result["promoted"]:
        # Same month, same data: the challenger scores what the champion scores (a tie or
        # a gain within the margin) and the champion does not move.
        assert champion.version != version.version
        gain = (float(version.tags["gate_challenger_score"])
                - float(version.tags["gate_champion_score"]))
        assert gain <= stack_settings.promotion_margin


def test_search_trials_run_on_both_workers_in_one_stored_study(manual_run, stack_settings):
    settings = stack_settings
    if settings.airflow_workers < 2 or settings.search_parallel_tasks < 2:
        pytest.skip("needs AIRFLOW_WORKERS >= 2 and SEARCH_PARALLEL_TASKS >= 2")
    # both workers answer their own Celery node name
    for name in ("airflow-worker", *stack.extra_workers(settings)):
        assert stack.app_probe(name, settings)[0], name
    af, run_id, result = manual_run.af, manual_run.run_id, manual_run.result

    tis = af.task_instances.get_task_instances(DAG, run_id).task_instances
    mapped = [ti for ti in tis if ti.task_id == "search_trials"]
    shares = shared_search.split_budget(settings.search_trials, settings.search_parallel_tasks)
    assert sorted(ti.map_index for ti in mapped) == list(range(len(shares)))
    assert all(ti.state == "success" for ti in mapped), [(ti.map_index, ti.state)
                                                        for ti in mapped]
    hosts = {ti.hostname for ti in mapped}
    # each worker takes one task at a time (prefetch 1) and both are idle here; the second
    # worker's task instances record its node name (chicago_crime.devtools.worker_name)
    assert len(hosts) == 2, hosts
    assert any(h.startswith("airflow-worker-2@") for h in hosts), hosts

    # the study in PostgreSQL: the whole budget, every trial its own number, each share's part
    name = shared_search.study_name(MONTH, run_id)
    study = optuna.load_study(study_name=name, storage=settings.search_storage())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == settings.search_trials
    assert len({t.number for t in complete}) == len(complete)
    per_share = [sum(t.user_attrs.get(shared_search.SHARE_ATTR) == i for t in complete)
                 for i in range(len(shares))]
    assert per_share == shares

    # MLflow: the training run is the parent of one nested run per trial
    client = registry.client_for(settings)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[shared_search.STUDY_TAG] == name
    assert parent.data.params["search_trials"] == str(settings.search_trials)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(int(c.data.tags["trial"]) for c in children) == sorted(
        t.number for t in complete)
    assert result["trials"] == settings.search_trials
