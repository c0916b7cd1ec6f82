"""Governance on the native stack: backfilling an older month registers a model and leaves the
champion trained on newer data in place (the reliability review saw it replaced).

The backfill's ETL run is monitored (the older month lies inside the champion's window: no
retraining is requested), then the month is retrained by hand, as an operator would."""

from __future__ import annotations

import uuid

import pytest
import requests
from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody

from chicago_crime.devtools import demo
from chicago_crime.devtools.airflow_api import connect, wait_for_dag, wait_for_run
from chicago_crime.model import registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3000)]
MONTH, OLDER = "2018-06", "2018-05"


@pytest.fixture(scope="module")
def champion(stack_settings) -> registry.ModelCard:
    """The champion, trained on the newest month (the training test usually made it)."""
    client = registry.client_for(stack_settings)
    name, alias = stack_settings.model_name, stack_settings.champion_alias
    if registry.card(client, name, alias) is None:
        demo.run_demo(MONTH, stack_settings)
    card = registry.card(client, name, alias)
    assert card is not None and card.window_end == "2018-06-30", card
    return card


def test_backfill_of_an_older_month_leaves_the_champion(champion, stack_settings):
    af = connect(stack_settings)
    for dag_id in reversed(demo.PIPELINE_DAGS):
        wait_for_dag(af, dag_id)
        af.dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))
    etl_run = demo.run_etl(af, OLDER)
    assert etl_run.state == "success"
    _, decision, asked = demo.follow_etl(af, etl_run)
    assert decision["month"] == OLDER
    run_id = asked.dag_run_id if asked is not None else f"manual__backfill_{uuid.uuid4().hex[:8]}"
    if asked is None:  # the month lies in the champion's window: an operator retrains it
        af.dag_runs.trigger_dag_run(demo.TRAIN_DAG, TriggerDAGRunPostBody(
            dag_run_id=run_id, conf={"month": OLDER}))
    train_run = wait_for_run(af, demo.TRAIN_DAG, run_id, timeout=1800)
    assert train_run.state == "success"
    result = af.xcom.get_xcom_entry(demo.TRAIN_DAG, "train_and_register", train_run.dag_run_id,
                                    "return_value").actual_instance.value
    assert result["month"] == OLDER and result["promoted"] is False
    assert "older data" in result["reason"] and "2018-06-30" in result["reason"]
    client = registry.client_for(stack_settings)
    name = stack_settings.model_name
    version = client.get_model_version(name, str(result["version"]))
    assert version.tags["gate_decision"] == "kept_champion"
    assert version.tags["window_end"] < "2018-06-01"
    current = registry.card(client, name, stack_settings.champion_alias)
    assert current is not None and current.version == champion.version
    shown = registry.describe(client, name, stack_settings.champion_alias)
    assert shown["latest_challenger"]["version"] == str(result["version"])
    assert "never promoted automatically" in shown["latest_challenger"]["reason"]
    served = requests.get(f"{stack_settings.api_url}/model", timeout=10).json()
    assert str(served["version"]) == champion.version
