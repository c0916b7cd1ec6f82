"""Ingestion tasks end to end: replay server (real HTTP, real data) -> moto S3."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from chicago_crime.config import Settings, load_settings
from chicago_crime.devtools.replay import CRIMES_DATASET, ReplayServer
from chicago_crime.ingest import (
    IngestError,
    build_window,
    crime_months,
    download_data,
    empty_months,
    missing_months,
    months_to_download,
    read_raw_csv,
    setup_s3,
    to_csv_bytes,
)
from chicago_crime.lake import Lake
from chicago_crime.layout import (
    month_range,
    quarantine_key,
    raw_crimes_key,
    raw_stations_key,
    window_key,
)
from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.record import CRIME_FIELDS
from chicago_crime.socrata import SocrataClient, SocrataError
from chicago_crime.validation import REASON

FIRST_RUN = month_range("2018-06", 12)  # 2017-07 .. 2018-06


def make_settings(s3_endpoint: str, socrata_url: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "aws_endpoint_url_s3": s3_endpoint,
        "data_repo_bucket_name": f"test-{os.urandom(4).hex()}",
        "socrata_base_url": socrata_url, "socrata_backoff_seconds": 0.01,
        "socrata_max_attempts": 3, **overrides,
    }
    return load_settings(**options)


def fresh(settings: Settings, **overrides: Any) -> tuple[Settings, Lake, SocrataClient]:
    s = settings.model_copy(update=overrides) if overrides else settings
    lake = Lake(settings=s)
    setup_s3(lake, s)
    return s, lake, SocrataClient(s)




@pytest.fixture
def settings(moto_endpoint: str, server: ReplayServer) -> Settings:
    return make_settings(moto_endpoint, server.url)


def export_ids(shared_data: Path, month: str) -> pd.Series:
    """The ids of one shared export (read directly, independent of the code under test)."""
    return pd.read_csv(crimes_export_path(shared_data, month), usecols=["ID"], dtype=str)["ID"]


def stored_ids(lake: Lake, key: str) -> pd.Series:
    return pd.read_csv(io.BytesIO(lake.get_bytes(key)), usecols=["id"], dtype=str)["id"]


@pytest.fixture(scope="module")
def first_run(moto_endpoint: str, replay: ReplayServer) -> dict[str, Any]:
    """A run for 2018-06 on an empty lake: setup_s3, download_data, build_window."""
    replay.clear_faults()  # the session's server may carry a fault another module left on
    s, lake, client = fresh(make_settings(moto_endpoint, replay.url))
    assert crime_months(lake) == []
    result = download_data("2018-06", lake, client, s)
    window = build_window("2018-06", lake)
    return {"settings": s, "lake": lake, "client": client, "result": result,
            "window": window, "snapshot": lake.snapshot()}


# -- setup_s3 ---------------------------------------------------------------------------------
def test_setup_s3_creates_bucket_and_expires_only_temporary_data(unit_settings):
    lake = Lake(settings=unit_settings)
    first = setup_s3(lake, unit_settings)
    assert first["created"] is True
    assert setup_s3(lake, unit_settings)["created"] is False
    rules = lake.lifecycle_rules()
    assert [(r["Filter"]["Prefix"], r["Expiration"]["Days"], r["Status"]) for r in rules] == [
        (unit_settings.etl_temp_prefix, unit_settings.etl_temp_expiry_days, "Enabled")]
    assert not "0-raw-data/".startswith(rules[0]["Filter"]["Prefix"])


@pytest.mark.parametrize("prefix", ["", "0-raw-data/", "0-raw-data/monthly-data/", "tmp"])
def test_setup_s3_refuses_a_prefix_that_could_expire_raw_data(unit_lake, unit_settings, prefix):
    with pytest.raises(ValueError, match="ETL_TEMP_PREFIX"):
        setup_s3(unit_lake, unit_settings.model_copy(update={"etl_temp_prefix": prefix}))
    assert unit_lake.lifecycle_rules() == []


# -- first run, window, idempotency -----------------------------------------------------------
def test_first_run_downloads_twelve_months_with_the_shared_row_counts(first_run, shared_data):
    result, lake = first_run["result"], first_run["lake"]
    assert result["status"] == "ok" and result["months"] == FIRST_RUN
    assert crime_months(lake) == FIRST_RUN
    stations = read_export(shared_data / "police_stations.csv")
    for month in FIRST_RUN:
        expected = export_ids(shared_data, month)
        assert result["rows"][month] == len(expected) and result["invalid"][month] == 0
        assert sorted(stored_ids(lake, raw_crimes_key(month))) == sorted(expected)
        assert len(read_raw_csv(lake, raw_stations_key(month))) == len(stations)
    assert lake.list_keys("0-raw-data/quarantine/") == []
    assert lake.list_keys("0-raw-data/monthly-data/2017-06/") == []


def test_partition_keeps_the_soda_columns_and_values(first_run, shared_data):
    part = read_raw_csv(first_run["lake"], raw_crimes_key("2018-01"))
    assert list(part.columns) == list(CRIME_FIELDS)
    export = read_export(crimes_export_path(shared_data, "2018-01"))
    common = [c for c in CRIME_FIELDS if c in export.columns]
    key = ["date", "id"]
    expected = export[common].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(part[common].sort_values(key).reset_index(drop=True),
                                  expected, check_dtype=False)


def test_window_is_the_deduplicated_twelve_months(first_run, shared_data):
    window = first_run["window"]
    ids = pd.concat([export_ids(shared_data, m) for m in FIRST_RUN])
    assert window["key"] == window_key("2018-06") == "0-raw-data/data/crimes_12m_2018-06-30.csv"
    assert window["rows"] == ids.nunique() and window["months"] == FIRST_RUN
    stored = stored_ids(first_run["lake"], window["key"])
    assert len(stored) == window["rows"] and stored.is_unique
    assert set(stored) == set(ids)


def test_rerun_is_idempotent(first_run, replay):
    s, lake, client = first_run["settings"], first_run["lake"], first_run["client"]
    replay.reset_stats()
    again = download_data("2018-06", lake, client, s)
    assert again["months"] == ["2018-06"]  # the lake has data: only the run's month
    assert again["rows"]["2018-06"] == first_run["result"]["rows"]["2018-06"]
    build_window("2018-06", lake)
    assert lake.snapshot() == first_run["snapshot"]
    assert replay.stats[f"requests:{CRIMES_DATASET}"] == 1


def test_window_dedup_keeps_latest_update_and_uses_only_the_window(unit_lake):
    def part(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
        df = pd.DataFrame(rows, columns=["id", "date", "updated_on"]).reindex(
            columns=list(CRIME_FIELDS))
        return df.assign(arrest=df["id"].map(lambda i: "true" if i == "1" else "false"))

    parts = {
        "2017-05": [("9", "2017-05-02T00:00:00.000", "2017-05-03T00:00:00.000")],  # outside
        "2017-06": [("1", "2017-06-30T10:00:00.000", "2018-01-01T00:00:00.000"),
                    ("2", "2017-06-01T00:00:00.000", "2017-06-02T00:00:00.000")],
        "2018-05": [("1", "2017-06-30T10:00:00.000", "2017-07-01T00:00:00.000"),
                    ("3", "2018-05-01T00:00:00.000", "2018-05-01T00:00:00.000")],
    }
    for month, rows in parts.items():
        unit_lake.put_bytes(raw_crimes_key(month), to_csv_bytes(part(rows)))
    one = load_settings(aws_access_key_id="t", aws_secret_access_key="t",
                        etl_first_run_months=1)
    window = build_window("2018-05", unit_lake, one)
    assert window["months"] == ["2017-06", "2018-05"] and window["duplicates"] == 1
    stored = read_raw_csv(unit_lake, window["key"])
    assert stored["id"].tolist() == ["2", "1", "3"]  # ordered by date
    assert stored.set_index("id").loc["1", "updated_on"] == "2018-01-01T00:00:00.000"
    with pytest.raises(IngestError, match="2018-06"):
        build_window("2018-06", unit_lake, one)


# -- faults -----------------------------------------------------------------------------------
def seeded(settings: Settings, months: tuple[str, ...] = ("2018-05",),
           ) -> tuple[Settings, Lake, SocrataClient]:
    """A lake that already holds (small) partitions for ``months``; the ETL keeps only the
    run's month complete (ETL_FIRST_RUN_MONTHS=1), so runs are monthly."""
    s, lake, client = fresh(settings, etl_first_run_months=1)
    for month in months:
        rows = pd.DataFrame({"id": ["1", "2"], "date": [f"{month}-02T00:00:00.000"] * 2})
        lake.put_bytes(raw_crimes_key(month),
                       to_csv_bytes(rows.reindex(columns=list(CRIME_FIELDS))))
        lake.put_bytes(raw_stations_key(month), b"district\n1\n")
    return s, lake, client


def test_two_500s_then_success(settings, server, shared_data):
    s, lake, client = seeded(settings)
    server.inject(status=500, times=2, dataset=CRIMES_DATASET)
    result = download_data("2018-06", lake, client, s)
    assert result["status"] == "ok" and result["months"] == ["2018-06"]
    expected = export_ids(shared_data, "2018-06")
    assert sorted(stored_ids(lake, raw_crimes_key("2018-06"))) == sorted(expected)
    assert server.stats["faults"] == 2
    assert crime_months(lake) == ["2018-05", "2018-06"]


def test_persistent_500s_fail_clearly_and_leave_partitions_intact(settings, server):
    s, lake, client = seeded(settings, months=("2018-05", "2018-06"))
    before = lake.snapshot()
    server.inject(status=500, times=None)
    with pytest.raises(SocrataError, match=r"request failed after 3 attempts.*HTTP 500"):
        download_data("2018-06", lake, client, s)
    assert lake.snapshot() == before


def test_first_run_failing_midway_writes_nothing(settings, server):
    s, lake, client = fresh(settings)
    server.inject(status=None, times=2)  # stations and the first month succeed ...
    server.inject(status=503, times=None, dataset=CRIMES_DATASET)  # ... then the portal dies
    with pytest.raises(SocrataError, match=CRIMES_DATASET):
        download_data("2018-06", lake, client, s)
    assert lake.list_keys("0-raw-data/") == []


def test_month_without_records_is_no_data(settings, server):
    s, lake, client = seeded(settings)
    before = lake.snapshot()
    result = download_data("2019-01", lake, client, s)
    assert result["status"] == "no_data" and result["months"] == [] and result["rows"] == {}
    assert lake.snapshot() == before


def test_first_run_ending_in_an_empty_month_stores_the_months_with_data(settings):
    s, lake, client = fresh(settings, etl_first_run_months=3)
    result = download_data("2018-08", lake, client, s)
    assert result["status"] == "no_data" and result["months"] == ["2018-06"]
    assert crime_months(lake) == ["2018-06"]
    # the backfilled month without records is marked as checked; the run's month is not
    assert result["empty_months"] == ["2018-07"] and empty_months(lake) == ["2018-07"]
    assert months_to_download("2018-08", lake, s) == ["2018-08"]


# -- an interrupted backfill is completed by the next run --------------------------------------
def test_backfill_interrupted_by_an_s3_error_is_completed_by_the_next_run(
        first_run, settings, shared_data):
    """The first run dies part-way through its writes (S3 error); the retry downloads every
    missing month, and the window has all twelve again."""
    s, lake, client = fresh(settings)
    put, calls = lake.put_bytes, {"n": 0}

    def failing(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        calls["n"] += 1
        if calls["n"] > 9:  # a few months stored, then S3 fails
            raise ConnectionError("S3 unreachable")
        put(key, data, content_type)

    lake.put_bytes = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        download_data("2018-06", lake, client, s)
    lake.put_bytes = put  # type: ignore[method-assign]
    stored = crime_months(lake)
    assert 0 < len(stored) < 12
    missing = missing_months("2018-06", lake, s)
    assert missing == [m for m in FIRST_RUN if m not in stored]
    with pytest.raises(IngestError, match=missing[0]):  # never a window of fewer months
        build_window("2018-06", lake, s)
    assert months_to_download("2018-06", lake, s) == sorted({*missing, "2018-06"})
    again = download_data("2018-06", lake, client, s)
    assert again["months"] == sorted({*missing, "2018-06"})
    window = build_window("2018-06", lake, s)
    assert window["months"] == FIRST_RUN
    assert window["rows"] == first_run["window"]["rows"]


def test_a_month_deleted_from_the_window_is_downloaded_again(first_run, settings, shared_data):
    """The review's repro: one month of the window gone, the next run restores it."""
    s, lake, client = fresh(settings)
    for month in FIRST_RUN:
        if month != "2018-01":
            for key in (raw_crimes_key(month), raw_stations_key(month)):
                lake.put_bytes(key, first_run["lake"].get_bytes(key))
    assert months_to_download("2018-06", lake, s) == ["2018-01", "2018-06"]
    with pytest.raises(IngestError, match="2018-01"):
        build_window("2018-06", lake, s)
    result = download_data("2018-06", lake, client, s)
    assert result["months"] == ["2018-01", "2018-06"]
    assert sorted(stored_ids(lake, raw_crimes_key("2018-01"))) == sorted(
        export_ids(shared_data, "2018-01"))
    assert len(build_window("2018-06", lake, s)["months"]) == 12


# -- validation and quarantine ----------------------------------------------------------------
def small_exports(shared_data: Path, folder: Path, rows: int = 200,
                  corrupt: dict[str, int] | None = None) -> Path:
    """A folder like ../shared/data/chicago with the first ``rows`` rows of 2018-05/06;
    ``corrupt`` maps a month to how many of its rows get coordinates outside Chicago."""
    (folder / "crimes").mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_data / "police_stations.csv", folder / "police_stations.csv")
    for month in ("2018-05", "2018-06"):
        df = pd.read_csv(crimes_export_path(shared_data, month), dtype=str,
                         keep_default_na=False).head(rows)
        bad = (corrupt or {}).get(month, 0)
        df.loc[df.index[-bad:] if bad else [], "Latitude"] = "36.5"
        df.to_csv(crimes_export_path(folder, month), index=False, compression="gzip")
    return folder


def run_on(folder: Path, settings: Settings, lake: Lake, month: str = "2018-06",
           ) -> dict[str, Any]:
    with ReplayServer(folder) as local:
        s = settings.model_copy(update={"socrata_base_url": local.url})
        return download_data(month, lake, SocrataClient(s), s)


def test_invalid_rows_are_quarantined_with_reason(settings, shared_data, tmp_path):
    s, lake, _ = fresh(settings, etl_first_run_months=2)
    folder = small_exports(shared_data, tmp_path / "exports", corrupt={"2018-06": 4})
    result = run_on(folder, s, lake)
    assert result["rows"] == {"2018-05": 200, "2018-06": 196}
    assert result["invalid"] == {"2018-05": 0, "2018-06": 4}
    quarantined = read_raw_csv(lake, quarantine_key("2018-06"))
    assert len(quarantined) == 4 and list(quarantined.columns) == [*CRIME_FIELDS, REASON]
    assert quarantined[REASON].str.contains("latitude: outside Chicago").all()
    stored = read_raw_csv(lake, raw_crimes_key("2018-06"))
    assert not set(stored["id"]) & set(quarantined["id"])
    assert not lake.exists(quarantine_key("2018-05"))


def test_too_many_invalid_rows_fail_without_writing(settings, shared_data, tmp_path):
    s, lake, _ = fresh(settings, etl_first_run_months=2, etl_max_invalid_fraction=0.05)
    folder = small_exports(shared_data, tmp_path / "exports", corrupt={"2018-06": 20})
    with pytest.raises(IngestError) as info:
        run_on(folder, s, lake)
    message = str(info.value)
    assert "2018-06: 20 of 200" in message and "latitude: outside Chicago" in message
    assert "ETL_MAX_INVALID_FRACTION" in message
    assert lake.list_keys() == []


def test_rerun_replaces_only_its_month(settings, shared_data, tmp_path):
    s, lake, _ = fresh(settings, etl_first_run_months=2)
    run_on(small_exports(shared_data, tmp_path / "v1", corrupt={"2018-06": 3}), s, lake)
    may = lake.etag(raw_crimes_key("2018-05"))
    assert lake.exists(quarantine_key("2018-06"))
    # the portal corrected June and published more records; May changed too but is not rerun
    result = run_on(small_exports(shared_data, tmp_path / "v2", rows=250), s, lake)
    assert result["months"] == ["2018-06"] and result["rows"] == {"2018-06": 250}
    assert len(read_raw_csv(lake, raw_crimes_key("2018-06"))) == 250
    assert not lake.exists(quarantine_key("2018-06"))  # stale quarantine removed
    assert lake.etag(raw_crimes_key("2018-05")) == may
