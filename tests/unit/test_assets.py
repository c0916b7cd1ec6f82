"""The month a DAG run is for: the trigger's param, else the newest asset event naming one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from chicago_crime.assets import ML_READY, RETRAIN_REQUESTED, requested_month


def events(*extras):
    return {RETRAIN_REQUESTED: [SimpleNamespace(extra=e) for e in extras]}


def test_the_trigger_param_wins_over_events():
    assert requested_month({"month": "2018-03"}, events({"month": "2018-06"}),
                           RETRAIN_REQUESTED, "monitor_model") == ("2018-03", {})


def test_the_newest_event_naming_a_month_gives_it_and_its_extra():
    month, extra = requested_month({"month": None}, events(
        {"month": "2018-05", "reason": "no champion"}, {"month": "2018-06", "reason": "drift"},
        {}, None), RETRAIN_REQUESTED, "monitor_model")
    assert (month, extra["reason"]) == ("2018-06", "drift")


def test_no_month_anywhere_is_a_clear_error_naming_the_producer():
    with pytest.raises(ValueError, match="etl_with_taskflow update the asset chicago_crimes_ml"):
        requested_month(None, {ML_READY: [SimpleNamespace(extra={})]}, ML_READY,
                        "etl_with_taskflow")
    with pytest.raises(ValueError, match="monitor_model"):
        requested_month({}, None, RETRAIN_REQUESTED, "monitor_model")


def test_followers_run_unpaused_one_at_a_time_and_take_a_valid_month_by_hand():
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    from chicago_crime.assets import follower_dag_args

    args = follower_dag_args(ML_READY, doing="monitor")
    assert args["schedule"] == [ML_READY] and args["is_paused_upon_creation"] is False
    assert args["max_active_runs"] == 1 and args["catchup"] is False
    month: Param = args["params"]["month"]
    assert month.resolve(None) is None and month.resolve("2018-06") == "2018-06"
    for bad in ("2018-6", "June", "2018-06; drop table"):
        with pytest.raises(ParamValidationError):
            month.resolve(bad)
