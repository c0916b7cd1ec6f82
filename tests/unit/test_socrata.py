"""The Socrata client over real HTTP (the replay server on the real exports)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from chicago_crime.config import load_settings
from chicago_crime.devtools.replay import CRIMES_DATASET, STATIONS_DATASET, ReplayServer
from chicago_crime.layout import month_bounds
from chicago_crime.portal import STATION_FIELDS, crimes_export_path, read_export
from chicago_crime.record import CRIME_FIELDS
from chicago_crime.socrata import SocrataClient, SocrataError, records_to_frame


def client_for(server: ReplayServer, **overrides: object) -> SocrataClient:
    options: dict[str, object] = {
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "socrata_base_url": server.url, "socrata_backoff_seconds": 0.01,
        "socrata_max_attempts": 3, **overrides,
    }
    settings = load_settings(**options)
    return SocrataClient(settings)


def sort_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("id", key=lambda s: s.astype(int)).reset_index(drop=True)


def test_month_matches_the_export(server, shared_data):
    df = client_for(server).crimes(*month_bounds("2018-02"))
    assert list(df.columns) == list(CRIME_FIELDS)
    assert all(pd.api.types.is_string_dtype(df[c]) for c in df.columns)
    export = read_export(crimes_export_path(shared_data, "2018-02"))
    common = [c for c in CRIME_FIELDS if c in export.columns]
    pd.testing.assert_frame_equal(sort_frame(df[common]), sort_frame(export[common]),
                                  check_dtype=False)
    with_coords = df["latitude"].notna()
    expected = "(" + df["latitude"] + ", " + df["longitude"] + ")"
    assert (df["location"] == expected)[with_coords].all() and with_coords.any()
    assert df.loc[~with_coords, "location"].isna().all()
    assert set(df["arrest"]) == {"true", "false"}
    assert df["date"].is_monotonic_increasing


def test_paging_reads_every_page(server):
    one_page = client_for(server).crimes(*month_bounds("2018-02"))
    server.reset_stats()
    paged = client_for(server, socrata_page_size=400).crimes(*month_bounds("2018-02"))
    pd.testing.assert_frame_equal(paged, one_page)
    assert server.stats[f"requests:{CRIMES_DATASET}"] == len(one_page) // 400 + 1 > 3


def test_stations(server, shared_data):
    df = client_for(server).stations()
    assert list(df.columns) == list(STATION_FIELDS)
    assert df["district"].tolist() == read_export(
        shared_data / "police_stations.csv")["district"].tolist()


def test_app_token_is_sent_and_missing_token_warns(server, caplog):
    from pydantic import SecretStr

    client_for(server, socrata_app_token=SecretStr("secret-token")).stations()
    assert server.stats["with_app_token"] == 1
    with caplog.at_level(logging.WARNING, logger="chicago_crime.socrata"):
        client_for(server, socrata_app_token=None)
    assert any("SOCRATA_APP_TOKEN is not set" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried(server, status):
    server.inject(status=status, times=2, dataset=STATIONS_DATASET)
    assert len(client_for(server).stations()) > 0
    assert server.stats[f"requests:{STATIONS_DATASET}"] == 3


def test_timeouts_are_retried(server):
    server.inject(status=None, delay=1.5, times=1, dataset=STATIONS_DATASET)
    client = client_for(server, socrata_timeout_seconds=0.3)
    assert len(client.stations()) > 0
    assert server.stats["faults"] == 1  # the slow answer timed out; a retry got the data
    assert server.stats[f"requests:{STATIONS_DATASET}"] >= 2


def test_persistent_errors_fail_clearly_after_max_attempts(server):
    server.inject(status=500, times=None)
    with pytest.raises(SocrataError) as info:
        client_for(server, socrata_max_attempts=4).crimes(*month_bounds("2018-02"))
    message = str(info.value)
    assert CRIMES_DATASET in message and "HTTP 500" in message and "4 attempts" in message
    assert info.value.status == 500 and info.value.dataset == CRIMES_DATASET
    assert server.stats[f"requests:{CRIMES_DATASET}"] == 4


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(server, status):
    server.inject(status=status, times=None)
    with pytest.raises(SocrataError, match=f"HTTP {status}.*not retried"):
        client_for(server).stations()
    assert server.stats["requests"] == 1


def test_connection_refused_is_retried_then_reported():
    settings = load_settings(aws_access_key_id="t", aws_secret_access_key="t",
                             socrata_base_url="http://127.0.0.1:9", socrata_max_attempts=2,
                             socrata_backoff_seconds=0.01)
    with pytest.raises(SocrataError, match=r"after 2 attempts.*ConnectionError"):
        SocrataClient(settings).stations()


def test_bad_base_url_is_rejected():
    settings = load_settings(aws_access_key_id="t", aws_secret_access_key="t",
                             socrata_base_url="data.cityofchicago.org")
    with pytest.raises(ValueError, match="SOCRATA_BASE_URL"):
        SocrataClient(settings)


def test_records_to_frame_flattens_json_types():
    df = records_to_frame(
        [{"id": "1", "arrest": True, "location": {"latitude": "41.8", "longitude": "-87.6"},
          ":@computed_region_x": "9"},
         {"id": "2", "arrest": False}],
        ("id", "arrest", "ward", "location"),
    )
    assert list(df.columns) == ["id", "arrest", "ward", "location"]
    assert df["arrest"].tolist() == ["true", "false"]
    assert df["location"].iloc[0] == "(41.8, -87.6)" and pd.isna(df["location"].iloc[1])
    assert df["ward"].isna().all()
