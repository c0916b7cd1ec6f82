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

from airflow_client.client import DAGPatchBody, TaskInstanceResponse

from chicago_crime import layout
from chicago_crime.config import get_settings
from chicago_crime.devtools import demo
from chicago_crime.devtools.airflow_api import connect, wait_for_dag
from chicago_crime.lake import Lake


def _seconds(ti: TaskInstanceResponse) -> float | None:
    if not ti.start_date or not ti.end_date:
        return None
    return (ti.end_date - ti.start_date).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--fresh", action="store_true", help="empty the lake's data first")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--to-champion", action="store_true",
                        help="also wait for monitor_model, train_model (when the monitoring "
                             "requests it) and a served champion")
    args = parser.parse_args()
    settings = get_settings()
    af = connect(settings)
    lake = Lake(settings=settings)
    for dag_id in demo.PIPELINE_DAGS:
        wait_for_dag(af, dag_id)
    af.dags.patch_dag(demo.ETL_DAG, DAGPatchBody(is_paused=False))
    for follower in (demo.MONITOR_DAG, demo.TRAIN_DAG):
        af.dags.patch_dag(follower, DAGPatchBody(is_paused=not args.to_champion))

    walls, champion_walls = [], []
    per_task: dict[str, list[float]] = {}
    for i in range(args.runs):
        if args.fresh and i == 0:
            for prefix in (layout.RAW_PREFIX, layout.ENRICHED_PREFIX, layout.PROCESSED_PREFIX):
                lake.delete_prefix(prefix)
        started = time.monotonic()
        run = demo.run_etl(af, args.month)
        walls.append(time.monotonic() - started)
        for ti in af.task_instances.get_task_instances(demo.ETL_DAG,
                                                       run.dag_run_id).task_instances:
            if (secs := _seconds(ti)) is not None:
                per_task.setdefault(ti.task_id, []).append(secs)
        if args.to_champion:
            demo.follow_etl(af, run)
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
