"""The lake on the running native stack: an interrupted backfill is completed by the next run,
and an object planted in the lake (a pickle where a fitted stage should be) is never loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from airflow_client.client import DAGPatchBody

from chicago_crime import ingest, layout
from chicago_crime.devtools.airflow_api import Airflow, connect, wait_for_dag
from chicago_crime.devtools.demo import run_etl
from chicago_crime.lake import Lake
from chicago_crime.manifest import StageIntegrityError
from chicago_crime.model import train

pytestmark = [pytest.mark.security, pytest.mark.timeout(2400)]
MONTH = "2018-06"
#: A month in the middle of MONTH's window.
VICTIM = "2017-09"
ETL = "etl_with_taskflow"


@pytest.fixture(scope="module")
def airflow(stack_settings) -> Airflow:
    """The ETL has run for MONTH (the integration tests usually did it)."""
    af = connect(stack_settings)
    wait_for_dag(af, ETL)
    af.dags.patch_dag(ETL, DAGPatchBody(is_paused=False))
    if not Lake(settings=stack_settings).exists(layout.manifest_key(MONTH, "select")):
        assert run_etl(af, MONTH).state == "success"
    return af


def test_an_interrupted_backfill_is_completed_by_the_next_run(airflow, stack_settings):
    """A backfill stopped part-way leaves a month of the window missing; the next run of the
    month downloads it again and builds the same 12-month window (it used to build an
    11-month window silently)."""
    lake = Lake(settings=stack_settings)
    crimes, stations = layout.raw_crimes_key(VICTIM), layout.raw_stations_key(VICTIM)
    etag, window_etag = lake.etag(crimes), lake.etag(layout.window_key(MONTH))
    lake.delete(crimes)
    lake.delete(stations)
    assert ingest.missing_months(MONTH, lake, stack_settings) == [VICTIM]
    run = run_etl(airflow, MONTH)
    assert run.state == "success"
    download = airflow.xcom.get_xcom_entry(ETL, "download_data", run.dag_run_id,
                                           "return_value").actual_instance.value
    assert download["months"] == [VICTIM, MONTH]
    assert lake.etag(crimes) == etag and lake.exists(stations)
    assert lake.etag(layout.window_key(MONTH)) == window_etag  # all 12 months, same bytes
    assert ingest.missing_months(MONTH, lake, stack_settings) == []


class _Payload:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_planted_in_the_lake_is_never_loaded(airflow, stack_settings, tmp_path):
    """S3 write access is not code execution: training reads a stage only when its bytes match
    the stage's manifest, and only through skops with the package's trusted types."""
    lake = Lake(settings=stack_settings)
    marker = tmp_path / "planted-pickle-ran"
    key = layout.fitted_key(MONTH, "scale")
    original = lake.get_bytes(key)
    lake.put_bytes(key, pickle.dumps(_Payload(marker)))
    try:
        with pytest.raises(StageIntegrityError, match=r"scale/scale\.skops"):
            train.load_month(MONTH, lake, stack_settings)
        with pytest.raises(Exception):  # noqa: B017 - read directly, skops refuses a pickle
            lake.read_object(key)
    finally:
        lake.put_bytes(key, original)
    assert not marker.exists()
    train.load_month(MONTH, lake, stack_settings)  # restored: trusted again
