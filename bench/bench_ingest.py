"""Ingest throughput: 12 months from the replay server into the lake (medians of N runs).

    .venv/bin/python bench/bench_ingest.py                # moto S3 in process
    .venv/bin/python bench/bench_ingest.py --real         # the S3 endpoint of the settings
    .venv/bin/python bench/bench_ingest.py --runs 5 --month 2018-06

Each run uses a fresh throwaway bucket (deleted afterwards) so it is a first run: setup_s3,
download_data (12 months), build_window. The replay server's month cache is warmed first
(its cold load is reported separately), so the figures measure the client, validation and
the lake writes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from chicago_crime.config import load_settings
from chicago_crime.devtools.replay import ReplayServer
from chicago_crime.ingest import build_window, download_data, setup_s3
from chicago_crime.lake import Lake
from chicago_crime.layout import month_range
from chicago_crime.socrata import SocrataClient

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chicago"


def one_run(settings: Any, month: str) -> dict[str, float]:
    bucket = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    s = settings.model_copy(update={"data_repo_bucket_name": bucket})
    lake = Lake(settings=s)
    try:
        t0 = time.perf_counter()
        setup_s3(lake, s)
        t1 = time.perf_counter()
        result = download_data(month, lake, SocrataClient(s), s)
        t2 = time.perf_counter()
        window = build_window(month, lake, s)
        t3 = time.perf_counter()
    finally:
        for key in lake.list_keys():
            lake.delete(key)
        lake.client.delete_bucket(Bucket=bucket)
    rows = sum(result["rows"].values())
    return {"setup_s": t1 - t0, "download_s": t2 - t1, "window_s": t3 - t2,
            "total_s": t3 - t0, "rows": rows, "window_rows": window["rows"],
            "rows_per_s": rows / (t2 - t1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--real", action="store_true",
                        help="use the S3 endpoint from the settings (.env) instead of moto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with ExitStack() as stack:
        replay = stack.enter_context(ReplayServer(args.data))
        overrides: dict[str, Any] = {"socrata_base_url": replay.url}
        if not args.real:
            from moto.server import ThreadedMotoServer

            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            stack.callback(moto.stop)
            host, port = moto.get_host_and_port()
            overrides |= {"aws_access_key_id": "bench", "aws_secret_access_key": "bench",
                          "aws_endpoint_url_s3": f"http://{host}:{port}"}
        settings = load_settings(**overrides)
        t = time.perf_counter()
        for m in month_range(args.month, settings.etl_first_run_months):
            if m in replay.data.months():
                replay.data.crimes_month(m)
        cold = time.perf_counter() - t

        runs = [one_run(settings, args.month) for _ in range(args.runs)]

    target = settings.aws_endpoint_url_s3 if args.real else "moto (in process)"
    print(f"ingest benchmark: {args.runs} run(s), {settings.etl_first_run_months} months "
          f"ending {args.month}, S3 = {target}")
    print(f"  replay server cold load of the months: {cold:.2f} s (not in the figures)")
    print(f"  rows downloaded per run: {runs[0]['rows']}, window rows: "
          f"{runs[0]['window_rows']}")
    for key, label in [("rows_per_s", "download throughput (rows/s)"),
                       ("setup_s", "setup_s3 (s)"), ("download_s", "download_data (s)"),
                       ("window_s", "build_window (s)"), ("total_s", "total (s)")]:
        values = [r[key] for r in runs]
        print(f"  {label:<30} median {statistics.median(values):>10.2f}   "
              f"min {min(values):>10.2f}   max {max(values):>10.2f}")


if __name__ == "__main__":
    main()
