"""Ingestion against the native stack's real S3 server (run `make local-up` first).

A throwaway bucket on the real server receives the first run for 2018-06 (twelve months
from the replay server over the real exports), the window, and an idempotent rerun.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest

from chicago_crime.devtools.replay import ReplayServer
from chicago_crime.ingest import build_window, crime_months, download_data, setup_s3
from chicago_crime.lake import Lake
from chicago_crime.layout import month_range, raw_crimes_key, window_key
from chicago_crime.portal import crimes_export_path
from chicago_crime.socrata import SocrataClient

pytestmark = pytest.mark.integration


@pytest.fixture
def lake_and_settings(stack_settings, shared_data) -> Iterator[tuple[Lake, object]]:
    bucket = f"it-ingest-{uuid.uuid4().hex[:8]}"
    with ReplayServer(shared_data) as replay:
        # a throwaway bucket: the S3 admin's (the platform's identity has its own bucket only)
        settings = stack_settings.model_copy(update={
            "data_repo_bucket_name": bucket, "socrata_base_url": replay.url,
            "aws_access_key_id": stack_settings.s3_admin_access_key_id,
            "aws_secret_access_key": stack_settings.s3_admin_secret_access_key})
        lake = Lake(settings=settings)
        try:
            yield lake, settings
        finally:
            if bucket in {b["Name"] for b in lake.client.list_buckets()["Buckets"]}:
                for key in lake.list_keys():
                    lake.delete(key)
                lake.client.delete_bucket(Bucket=bucket)


def test_twelve_month_ingest_on_real_s3(lake_and_settings, shared_data):
    lake, settings = lake_and_settings
    assert setup_s3(lake, settings)["created"] is True
    rules = lake.lifecycle_rules()
    assert [r["Filter"]["Prefix"] for r in rules] == [settings.etl_temp_prefix]

    result = download_data("2018-06", lake, SocrataClient(settings), settings)
    months = month_range("2018-06", 12)
    assert result["status"] == "ok" and crime_months(lake) == months
    ids = []
    for month in months:
        expected = pd.read_csv(crimes_export_path(shared_data, month), usecols=["ID"],
                               dtype=str)["ID"]
        stored = pd.read_csv(io.BytesIO(lake.get_bytes(raw_crimes_key(month))),
                             usecols=["id"], dtype=str)["id"]
        assert sorted(stored) == sorted(expected)
        ids.append(expected)
    window = build_window("2018-06", lake, settings)
    assert window["key"] == window_key("2018-06")
    assert window["rows"] == pd.concat(ids).nunique()

    before = lake.snapshot()
    download_data("2018-06", lake, SocrataClient(settings), settings)
    build_window("2018-06", lake, settings)
    assert lake.snapshot() == before
