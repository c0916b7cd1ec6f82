"""Monitor the champion on a month: data drift, prediction drift, performance decay.

Scheduled on the asset ``etl_with_taskflow`` publishes (a month's ML-ready dataset; the month
comes from the asset event), or triggered by hand with ``{"month": "YYYY-MM"}``.

``assess`` measures the month against the champion's training window (PSI + KS/chi-squared
per enriched feature and model input, prediction drift, ROC AUC / Brier / ECE on the month's
labelled records); ``decide`` applies the thresholds of the settings; ``report`` logs the
metrics, ``report.html`` and ``summary.json`` to MLflow (experiment ``MONITOR_EXPERIMENT``),
writes them to the lake under ``3-monitoring/{month}/`` and pushes gauges to the Pushgateway
when one is configured. Then one branch runs: ``request_retraining`` updates the asset
``chicago_crime_retrain_requested`` (extra: month and reason), which ``train_model`` is
scheduled on, or ``no_action`` records that nothing is needed.

The DAG only declares the graph: the package is imported inside the tasks
(:mod:`chicago_crime.monitoring.monitor`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from chicago_crime.assets import ML_READY, RETRAIN_REQUESTED, follower_dag_args, requested_month


@dag(
    dag_id="monitor_model",
    tags=["monitoring", "chicago_crime"],
    doc_md=__doc__,
    **follower_dag_args(ML_READY, doing="monitor"),
)
def monitor_model():
    @task
    def resolve_month(params=None, triggering_asset_events=None) -> str:
        return requested_month(params, triggering_asset_events, ML_READY, "etl_with_taskflow")[0]

    # assess and report talk to the lake and MLflow: a transient error is retried (both are
    # idempotent: the lake is rewritten whole, a retried report re-tags the earlier run)
    @task(retries=2, retry_delay=timedelta(seconds=20))
    def assess(month: str) -> dict[str, Any]:
        from chicago_crime.monitoring.monitor import assess

        return assess(month)

    @task
    def decide(assessment: dict[str, Any]) -> dict[str, Any]:
        from chicago_crime.monitoring.monitor import decide

        return decide(assessment)

    @task(retries=2, retry_delay=timedelta(seconds=20))
    def report(assessment: dict[str, Any], decision: dict[str, Any],
               ti=None) -> dict[str, Any]:
        from chicago_crime.manifest import attempt_identity
        from chicago_crime.monitoring.monitor import publish

        attempt = attempt_identity(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                   try_number=ti.try_number)
        return {**publish(assessment, decision, attempt=attempt), "decision": decision}

    @task.branch
    def act(published: dict[str, Any]) -> str:
        return "request_retraining" if published["decision"]["retrain"] else "no_action"

    @task(outlets=[RETRAIN_REQUESTED])
    def request_retraining(published: dict[str, Any], outlet_events=None) -> dict[str, Any]:
        """Ask ``train_model`` to retrain the month; the reason travels with the event."""
        decision = published["decision"]
        extra = {"month": decision["month"], "reason": decision["reason"],
                 "monitor_run_id": published["run_id"]}
        outlet_events[RETRAIN_REQUESTED].extra = extra
        return extra

    @task
    def no_action(published: dict[str, Any]) -> str:
        return f"{published['month']}: {published['decision']['reason']}"

    assessment = assess(resolve_month())
    published = report(assessment, decide(assessment))
    act(published) >> [request_retraining(published), no_action(published)]


monitor_model()
