"""Benchmark the DAGs on the running native stack: trigger -> success, per task, to champion.

    .venv/bin/python bench/bench_pipeline.py --month 2018-06 [--fresh] [--runs 3] [--to-champion]

``--fresh`` deletes the lake's data prefixes first (0-raw-data, 1-enriched-data,
2-processed-data), so the run downloads the full 12 months as a first run does. Later runs
of the same month download only that month. Figures are medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime

from chicago_crime import layout
from chicago_crime.config import get_settings
from chicago_crime.devtools import demo
from chicago_crime.devtools.airflow_client import AirflowClient
from chicago_crime.lake import Lake


def _seconds(ti: dict) -> float | None:
    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    start = datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(ti["end_date"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--fresh", action="store_true", help="empty the lake's data first")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--to-champion", action="store_true",
                        help="also wait for train_model and a served champion")
    args = parser.parse_args()
    settings = get_settings()
    client = AirflowClient(settings)
    lake = Lake(settings=settings)
    for dag_id in (demo.ETL_DAG, demo.TRAIN_DAG):
        client.wait_for_dag(dag_id)
    client.set_paused(demo.ETL_DAG, False)
    client.set_paused(demo.TRAIN_DAG, not args.to_champion)

    walls, champion_walls = [], []
    per_task: dict[str, list[float]] = {}
    for i in range(args.runs):
        if args.fresh and i == 0:
            for prefix in (layout.RAW_PREFIX, layout.ENRICHED_PREFIX, layout.PROCESSED_PREFIX):
                lake.delete_prefix(prefix)
        started = time.monotonic()
        run = demo.run_etl(client, args.month)
        walls.append(time.monotonic() - started)
        for ti in client.task_instances(demo.ETL_DAG, run["dag_run_id"]):
            if (secs := _seconds(ti)) is not None:
                per_task.setdefault(ti["task_id"], []).append(secs)
        if args.to_champion:
            demo.wait_for_training(client, after=run["start_date"])
            demo.wait_for_champion(settings)
            champion_walls.append(time.monotonic() - started)
        print(f"run {i + 1}: ETL DAG {walls[-1]:.1f}s"
              + (f", trigger -> champion served {champion_walls[-1]:.1f}s"
                 if champion_walls else ""), flush=True)

    print(f"\netl_with_taskflow {args.month}: median wall time trigger -> success "
          f"{statistics.median(walls):.1f}s over {len(walls)} run(s)"
          + (" (first run: 12-month download)" if args.fresh and args.runs == 1 else ""))
    ingest = sum(statistics.median(per_task.get(t, [0.0]))
                 for t in ("setup_s3", "download_data", "build_window"))
    print(f"setup_s3 + download_data + build_window: {ingest:.1f}s (median task durations)")
    print(f"{'task':<20} {'median s':>9}")
    for task, values in per_task.items():
        print(f"{task:<20} {statistics.median(values):>9.1f}")
    if champion_walls:
        print(f"trigger -> champion served: median {statistics.median(champion_walls):.1f}s")


if __name__ == "__main__":
    main()
