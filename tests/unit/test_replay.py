"""The replay server: SoQL subset, SODA JSON form, fault injection, counters, CLI."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import requests

from chicago_crime.devtools.replay import (
    CRIMES_DATASET,
    STATIONS_DATASET,
    Predicate,
    QueryError,
    ReplayServer,
    parse_order,
    parse_where,
)
from chicago_crime.portal import crimes_export_path, read_export

JUNE = "date >= '2018-06-01T00:00:00' AND date < '2018-07-01T00:00:00'"




def get(server: ReplayServer, dataset: str = CRIMES_DATASET, **params: object,
        ) -> requests.Response:
    return requests.get(f"{server.url}/resource/{dataset}.json", params=params, timeout=30)


def test_parse_where_comparisons_and_between():
    assert parse_where("date >= '2018-06-01T00:00:00' AND date < '2018-07-01'") == [
        Predicate("date", ">=", "2018-06-01T00:00:00", True),
        Predicate("date", "<", "2018-07-01", True),
    ]
    preds = parse_where("(date between '2018-01-01' and '2018-01-31') and ward = 3")
    assert [(p.field, p.op, p.value) for p in preds] == [
        ("date", ">=", "2018-01-01"), ("date", "<=", "2018-01-31"), ("ward", "=", "3")]
    assert parse_where("block = 'O''HARE AND MORE'") == [
        Predicate("block", "=", "O'HARE AND MORE", True)]
    assert parse_where(None) == []


@pytest.mark.parametrize("where", ["date like '2018%'", "date >= ", "date >= '1' OR id = 2"])
def test_parse_where_rejects_unsupported(where):
    with pytest.raises(QueryError):
        parse_where(where)


def test_parse_order():
    assert parse_order("date DESC, id") == [("date", False), ("id", True)]
    assert parse_order(":id") == [(":id", True)]
    with pytest.raises(QueryError):
        parse_order("date sideways")


def test_month_in_soda_json_form(server, shared_data):
    resp = get(server, **{"$where": JUNE, "$order": "date, id", "$limit": 50_000})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    rows = resp.json()
    export = read_export(crimes_export_path(shared_data, "2018-06"))
    assert len(rows) == len(export)
    assert sorted(r["id"] for r in rows) == sorted(export["id"])
    dates = [r["date"] for r in rows]
    assert dates == sorted(dates)  # ISO floating timestamps sort as text
    for row in rows[:500]:
        assert isinstance(row["arrest"], bool) and isinstance(row["domestic"], bool)
        assert all(isinstance(v, str) for k, v in row.items()
                   if k not in {"arrest", "domestic", "location"})
        assert pd.Timestamp(row["date"]).strftime("%Y-%m-%dT%H:%M:%S.000") == row["date"]
    with_coords = next(r for r in rows if "latitude" in r)
    assert with_coords["location"]["latitude"] == with_coords["latitude"]
    assert with_coords["location"]["longitude"] == with_coords["longitude"]
    # missing values are omitted, never null
    no_coords = [r for r in rows if "latitude" not in r]
    assert len(no_coords) == export["latitude"].isna().sum() > 0
    assert all("location" not in r and "x_coordinate" not in r for r in no_coords)
    assert all(v is not None for r in rows for v in r.values())


def test_only_the_requested_months_are_loaded(shared_data):
    with ReplayServer(shared_data) as fresh:
        assert get(fresh, **{"$where": JUNE, "$limit": 1}).status_code == 200
        assert list(fresh.data._months) == ["2018-06"]


def test_between_is_inclusive_and_order_desc(server, shared_data):
    where = "date between '2018-06-30T23:00:00' and '2018-06-30T23:59:00'"
    rows = get(server, **{"$where": where, "$order": "date DESC, id", "$limit": 5000}).json()
    export = read_export(crimes_export_path(shared_data, "2018-06"))
    inside = export["date"].between("2018-06-30T23:00:00.000", "2018-06-30T23:59:00.000")
    assert rows and len(rows) == inside.sum()
    assert rows[0]["date"] == export.loc[inside, "date"].max()
    assert all("2018-06-30T23:00:00.000" <= r["date"] <= "2018-06-30T23:59:00.000"
               for r in rows)
    keys = [(r["date"], -int(r["id"])) for r in rows]
    assert keys == sorted(keys, reverse=True)


def test_limit_offset_pages_partition_the_result(server):
    params = {"$where": JUNE, "$order": "date, id"}
    everything = [r["id"] for r in get(server, **params, **{"$limit": 50_000}).json()]
    pages: list[str] = []
    offset = 0
    while True:
        page = get(server, **params, **{"$limit": 700, "$offset": offset}).json()
        pages += [r["id"] for r in page]
        if len(page) < 700:
            break
        offset += 700
    assert pages == everything and len(everything) > 3 * 700


def test_default_limit_and_empty_month(server):
    assert len(get(server, **{"$where": JUNE}).json()) == 1000
    where = "date >= '2030-01-01T00:00:00' AND date < '2030-02-01T00:00:00'"
    assert get(server, **{"$where": where}).json() == []


def test_stations(server, shared_data):
    rows = get(server, STATIONS_DATASET, **{"$order": ":id"}).json()
    export = read_export(shared_data / "police_stations.csv")
    assert [r["district"] for r in rows] == export["district"].tolist()
    assert rows[0]["location"]["latitude"] == rows[0]["latitude"]


def test_errors_in_soda_form(server):
    bad = get(server, **{"$select": "id"})
    assert bad.status_code == 400 and bad.json()["error"] is True
    assert get(server, **{"$where": "date ~ 1"}).status_code == 400
    assert get(server, "abcd-1234").status_code == 404


def test_fault_injection_python_api(server):
    server.inject(status=500, times=2)
    assert [get(server, STATIONS_DATASET).status_code for _ in range(3)] == [500, 500, 200]
    server.inject(status=429, times=None, dataset=CRIMES_DATASET)
    assert get(server, STATIONS_DATASET).status_code == 200
    assert get(server, **{"$limit": 1}).status_code == 429
    assert get(server, **{"$limit": 1}).status_code == 429
    server.clear_faults()
    assert get(server, **{"$where": JUNE, "$limit": 1}).status_code == 200
    stats = server.stats
    assert stats["requests"] == 7 and stats["faults"] == 4
    assert stats[f"requests:{CRIMES_DATASET}"] == 3


def test_fault_control_endpoint_and_stats(server):
    spec = {"status": 503, "times": 1, "delay": 0.2, "dataset": STATIONS_DATASET}
    assert requests.post(f"{server.url}/_faults", json=spec, timeout=5).json() == spec
    assert get(server, STATIONS_DATASET).status_code == 503
    assert get(server, STATIONS_DATASET).status_code == 200
    requests.post(f"{server.url}/_faults", json={"status": 500, "times": None}, timeout=5)
    assert get(server, STATIONS_DATASET).status_code == 500
    assert requests.delete(f"{server.url}/_faults", timeout=5).status_code == 200
    assert get(server, STATIONS_DATASET, **{"$$app_token": "t"}).status_code == 200
    stats = requests.get(f"{server.url}/_stats", timeout=5).json()
    assert stats["requests"] == 4 and stats["faults"] == 2 and stats["with_app_token"] == 1
    bad = requests.post(f"{server.url}/_faults", json={"status": 200}, timeout=5)
    assert bad.status_code == 400


def test_cli_serves_over_http(shared_data):
    proc = subprocess.Popen(
        [sys.executable, "-m", "chicago_crime.devtools.replay", "--data", str(shared_data),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        rows = requests.get(f"{url}/resource/{STATIONS_DATASET}.json", timeout=30).json()
        assert len(rows) == len(read_export(shared_data / "police_stations.csv"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
