"""The Airflow assets of the platform, declared once for the DAGs that produce and consume them.

* :data:`ML_READY`: ``etl_with_taskflow`` updates it when a month's ML-ready dataset is in the
  lake (the event's ``extra`` names the month and its selected features); ``monitor_model`` is
  scheduled on it.
* :data:`RETRAIN_REQUESTED`: ``monitor_model`` updates it when a month's drift or decay passes
  the thresholds (or there is no champion yet); the event's ``extra`` holds ``month`` and
  ``reason``. ``train_model`` is scheduled on it: retraining happens on evidence, not because
  the ETL ran.

The assets are identified by name only (the URI is the name): declaring them needs no
settings, so DAG files import this module at parse time for free; where the data lives is in
the event and in :mod:`chicago_crime.layout`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Asset, Param

ML_READY_NAME = "chicago_crimes_ml_ready"
ML_READY = Asset(name=ML_READY_NAME)
RETRAIN_REQUESTED_NAME = "chicago_crime_retrain_requested"
RETRAIN_REQUESTED = Asset(name=RETRAIN_REQUESTED_NAME)


def requested_month(params: dict[str, Any] | None, triggering_asset_events: Any, asset: Asset,
                    producer: str) -> tuple[str, dict[str, Any]]:
    """The month a run is for and the event's ``extra``: the trigger's ``month`` param first,
    else the newest event of ``asset`` that names one (``producer`` updates it; named in the
    error a run with neither gets)."""
    if params and params.get("month"):
        return params["month"], {}
    events = triggering_asset_events[asset] if triggering_asset_events else []
    extras = [e.extra for e in events if e.extra and e.extra.get("month")]
    if not extras:
        raise ValueError(f'no month: trigger with conf {{"month": "YYYY-MM"}} or let {producer} '
                         f"update the asset {asset.name}")
    return extras[-1]["month"], extras[-1]


def follower_dag_args(asset: Asset, *, doing: str) -> dict[str, Any]:
    """``@dag`` arguments shared by the DAGs an asset schedules (``monitor_model``,
    ``train_model``): unpaused from the start, because the UI's Trigger button unpauses only
    the DAG it triggers and a follower must run without a manual unpause; one run at a time; and
    a ``month`` param to run it by hand (empty = the asset event's month; see
    :func:`requested_month`)."""
    return {
        "schedule": [asset],
        "start_date": pendulum.datetime(2018, 1, 1, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "is_paused_upon_creation": False,
        "default_args": {"owner": "ml-platform", "retries": 0},
        "params": {"month": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}$",
                                  description=f"Month to {doing} (YYYY-MM); empty = from "
                                              "the asset")},
    }
