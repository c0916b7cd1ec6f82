"""Train, evaluate and register the arrest model for a month, on the Celery worker.

Scheduled on the asset ``chicago_crime_retrain_requested``, which ``monitor_model`` updates
when a month's drift or decay passes the thresholds of the settings, or when there is no
champion yet (the month and the reason come from the asset event): retraining happens on
evidence, not because the ETL ran. Trigger it by hand with ``{"month": "YYYY-MM"}`` to retrain
any month already processed. The hyperparameter search is spread over mapped
``search_trials`` tasks (``SEARCH_PARALLEL_TASKS`` shares of ``SEARCH_TRIALS``) that share one
Optuna study in PostgreSQL, on any Celery worker (``chicago_crime.model.shared_search``). The
champion alias moves only when the new version beats the
current champion on the same test set (see ``chicago_crime.model.registry``).

The DAG only declares the graph: the package is imported inside the tasks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, task

from chicago_crime.assets import RETRAIN_REQUESTED, follower_dag_args, requested_month


@dag(
    dag_id="train_model",
    tags=["training", "chicago_crime"],
    doc_md=__doc__,
    **follower_dag_args(RETRAIN_REQUESTED, doing="train on"),
)
def train_model():
    @task
    def resolve_month(params=None, triggering_asset_events=None) -> str:
        """The month to train: the trigger's, else the retraining request's (its reason is
        logged)."""
        import logging

        month, request = requested_month(params, triggering_asset_events, RETRAIN_REQUESTED,
                                         "monitor_model")
        if request:
            logging.getLogger(__name__).info("retraining %s requested by monitor_model: %s",
                                             month, request.get("reason"))
        return month

    @task
    def open_search(month: str, dag_run=None) -> list[dict[str, Any]]:
        """The parent MLflow run and the shared Optuna study; one small dict per share."""
        from chicago_crime.model.shared_search import open_search

        return open_search(month, dag_run.run_id)

    @task(execution_timeout=timedelta(minutes=30), retries=1)
    def search_trials(share: dict[str, Any]) -> dict[str, Any]:
        """One share of the trial budget, on whichever Celery worker takes it."""
        from chicago_crime.model.shared_search import run_share

        return run_share(share)

    @task(execution_timeout=timedelta(minutes=30))
    def train_and_register(shares: list[dict[str, Any]], ran: Any) -> dict[str, Any]:
        """Refit the study's best configuration, evaluate, register and gate."""
        import logging

        from chicago_crime.model.shared_search import finish

        logging.getLogger(__name__).info("search shares: %s", list(ran))
        return finish(shares[0])

    @task
    def notify_api(result: dict[str, Any]) -> str:
        """Ask the model server to reload now (it also polls the registry on its own)."""
        import logging

        import requests

        from chicago_crime.config import get_settings

        settings = get_settings()
        if not result.get("promoted"):
            return "champion unchanged"
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        try:
            resp = requests.post(f"{settings.api_url}/model/reload", timeout=60,
                                 headers={"X-API-Key": key})
            return f"API reload: {resp.status_code}"
        except requests.RequestException as exc:  # the API polls the registry anyway
            logging.getLogger(__name__).warning("could not reach the model API at %s: %s",
                                                settings.api_url, exc)
            return "API unreachable; it will pick the champion up on its next poll"

    shares = open_search(resolve_month())
    notify_api(train_and_register(shares, search_trials.expand(share=shares)))


train_model()
