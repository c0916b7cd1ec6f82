"""train_model on the native stack: manual trigger for a processed month, gate on a tie."""

from __future__ import annotations

import uuid

import pytest
from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody

from chicago_crime import layout
from chicago_crime.devtools.airflow_api import connect, wait_for_dag, wait_for_run
from chicago_crime.devtools.demo import run_etl
from chicago_crime.lake import Lake
from chicago_crime.model import registry

pytestmark = pytest.mark.integration

MONTH = "2018-06"


@pytest.fixture(scope="module")
def processed_month(stack_settings):
    """Make sure the month went through the ETL (the ETL DAG test usually did it)."""
    af = connect(stack_settings)
    if not Lake(settings=stack_settings).exists(
            layout.fitted_key(MONTH, "select")):
        wait_for_dag(af, "etl_with_taskflow")
        af.dags.patch_dag("etl_with_taskflow", DAGPatchBody(is_paused=False))
        run_etl(af, MONTH)
    return af


def test_manual_training_of_a_processed_month(processed_month, stack_settings):
    af = processed_month
    wait_for_dag(af, "train_model")
    af.dags.patch_dag("train_model", DAGPatchBody(is_paused=False))
    mlflow_client = registry.client_for(stack_settings)
    name = stack_settings.model_name
    run_id = f"manual__test_{uuid.uuid4().hex[:8]}"
    af.dag_runs.trigger_dag_run("train_model", TriggerDAGRunPostBody(
        dag_run_id=run_id, conf={"month": MONTH}))
    wait_for_run(af, "train_model", run_id, timeout=1500)
    result = af.xcom.get_xcom_entry("train_model", "train_and_register", run_id,
                                    "return_value").actual_instance.value
    assert result["version"]
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
