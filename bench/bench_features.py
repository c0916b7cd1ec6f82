"""Feature pipeline: per-stage wall time and peak memory on the 12-month window (medians).

    .venv/bin/python bench/bench_features.py                 # moto S3 in process
    .venv/bin/python bench/bench_features.py --runs 3 --month 2018-06
    .venv/bin/python bench/bench_features.py --real          # the S3 endpoint of the settings

The window (12 months of ``../shared/data/chicago`` ending at ``--month``, ~270k rows) and
the stations are written to a throwaway bucket once, then every ETL stage function runs as
the DAG runs it (lake in, lake out). "wall" includes the lake I/O; "compute" repeats the same
transformers in memory without the lake. Peak memory is the process RSS sampled every 10 ms
during the stage (and its increase over the RSS before the stage).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from chicago_crime import etl, layout, portal, stages
from chicago_crime import features as F
from chicago_crime import record as R
from chicago_crime.config import load_settings
from chicago_crime.lake import Lake

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chicago"
MB = 1024 * 1024


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Sample the process RSS in a thread; yields a dict filled with start/peak (MiB)."""
    proc = psutil.Process()
    out = {"start": proc.memory_info().rss / MB, "peak": 0.0}
    out["peak"] = out["start"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], proc.memory_info().rss / MB)
            stop.wait(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], proc.memory_info().rss / MB)


def measure(func: Callable[[], Any]) -> tuple[Any, float, float, float]:
    with peak_rss() as mem:
        t0 = time.perf_counter()
        result = func()
        seconds = time.perf_counter() - t0
    return result, seconds, mem["peak"], mem["peak"] - mem["start"]


def compute_only(raw: pd.DataFrame, stations: pd.DataFrame,
                 settings: Any) -> dict[str, tuple[float, float, float]]:
    """The same transformers in memory (no lake): seconds, peak RSS, RSS increase."""
    out: dict[str, tuple[float, float, float]] = {}
    seed = settings.random_seed
    y_all = raw["arrest"].map(R.to_bool) == 1.0
    enricher = F.CrimeEnricher(stations).fit()
    enriched, *stats = measure(lambda: enricher.transform(raw))
    out["enrich"] = tuple(stats)
    (train_pos, test_pos), *stats = measure(
        lambda: etl.split_positions(y_all, settings))
    out["split"] = tuple(stats)
    X_train, X_test = enriched.iloc[train_pos], enriched.iloc[test_pos]
    y_train = y_all.iloc[train_pos]
    for name, step in stages.estimators(stations, seed)[1:]:  # after enrich, in table order
        if hasattr(step, "fit_resample"):
            def resample(step: Any = step, tr: Any = X_train, ytr: Any = y_train) -> Any:
                return step.fit_resample(tr, ytr)
            (X_train, y_train), *stats = measure(resample)
        else:
            def run(step: Any = step, tr: Any = X_train, te: Any = X_test,
                    ytr: Any = y_train) -> tuple[Any, Any]:
                return step.fit_transform(tr, ytr), step.transform(te)
            (X_train, X_test), *stats = measure(run)
        out[name] = tuple(stats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--real", action="store_true", help="use the settings' S3 endpoint")
    args = parser.parse_args()

    months = layout.month_range(args.month, 12)
    raw = pd.concat([portal.read_export(portal.crimes_export_path(args.data, m))
                     for m in months], ignore_index=True)
    stations = portal.read_export(args.data / "police_stations.csv")
    print(f"window {months[0]}..{months[-1]}: {len(raw):,} rows, {len(stations)} stations, "
          f"{args.runs} run(s)")

    server = None
    overrides: dict[str, Any] = {"data_repo_bucket_name": f"bench-feat-{uuid.uuid4().hex[:8]}"}
    if not args.real:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        overrides |= {"aws_access_key_id": "bench", "aws_secret_access_key": "bench",
                      "aws_endpoint_url_s3": f"http://{host}:{port}"}
    settings = load_settings(**overrides)
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    wall: dict[str, list[float]] = {s: [] for s in stages.NAMES}
    peak: dict[str, list[float]] = {s: [] for s in stages.NAMES}
    grow: dict[str, list[float]] = {s: [] for s in stages.NAMES}
    comp: dict[str, list[float]] = {s: [] for s in stages.NAMES}
    totals: list[float] = []
    try:
        lake.write_csv(layout.window_key(args.month), raw)
        lake.write_csv(layout.raw_stations_key(args.month), stations)
        for _ in range(args.runs):
            lake.delete_prefix(layout.processed_prefix(args.month))
            total = 0.0
            for stage in stages.NAMES:
                result, seconds, top, up = measure(
                    lambda s=stage: etl.run_stage(s, args.month, lake, settings))
                assert result["status"] == etl.OK, result
                wall[stage].append(seconds)
                peak[stage].append(top)
                grow[stage].append(up)
                total += seconds
            totals.append(total)
            for stage, (seconds, _top, _up) in compute_only(raw, stations, settings).items():
                comp[stage].append(seconds)
        rows = lake.read_json(layout.report_key(args.month, stages.NAMES[-1]))
    finally:
        lake.delete_prefix("0-")
        lake.delete_prefix("1-")
        lake.delete_prefix("2-")
        lake.client.delete_bucket(Bucket=lake.bucket)
        if server is not None:
            server.stop()

    med = statistics.median
    print(f"\n{'stage':<10}{'wall s':>9}{'compute s':>11}{'peak RSS MiB':>14}{'+RSS MiB':>10}")
    for stage in stages.NAMES:
        print(f"{stage:<10}{med(wall[stage]):>9.2f}{med(comp[stage]):>11.2f}"
              f"{med(peak[stage]):>14.0f}{med(grow[stage]):>10.0f}")
    print(f"{'total':<10}{med(totals):>9.2f}{sum(med(comp[s]) for s in stages.NAMES):>11.2f}")
    print(f"\nrows: train {rows['rows_out']['train']:,} (balanced), "
          f"test {rows['rows_out']['test']:,}; selected features: "
          f"{len(rows['columns'])}")


if __name__ == "__main__":
    main()
