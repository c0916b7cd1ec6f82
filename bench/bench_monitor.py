"""Benchmark monitor_model on the running native stack (a champion must be registered).

    .venv/bin/python bench/bench_monitor.py --month 2018-06 [--runs 3] [--no-dag]

Prints, per run and as medians: the phases of ``monitoring.monitor`` in this process (assess:
lake reads, the champion's load, both samples through its fitted steps, the statistics and
the decay; decide; publish: MLflow run, lake, Pushgateway) and the DAG's wall time from
trigger to success through Airflow's REST API, with each task's duration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody

from chicago_crime.config import get_settings
from chicago_crime.devtools import demo
from chicago_crime.devtools.airflow_api import connect, wait_for_dag, wait_for_run
from chicago_crime.lake import Lake
from chicago_crime.monitoring import monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-dag", action="store_true", help="in-process phases only")
    args = parser.parse_args()
    settings = get_settings()
    lake = Lake(settings=settings)
    phases: dict[str, list[float]] = {}
    for i in range(args.runs):
        started = time.perf_counter()
        assessment = monitor.assess(args.month, settings, lake)
        assessed = time.perf_counter()
        decision = monitor.decide(assessment, settings)
        monitor.publish(assessment, decision, settings, lake)
        published = time.perf_counter()
        for name, value in (("assess", assessed - started), ("publish", published - assessed),
                            ("total", published - started)):
            phases.setdefault(name, []).append(value)
        print(f"in process, run {i + 1}: assess {assessed - started:.1f}s, publish "
              f"{published - assessed:.1f}s ({len(assessment['drift'])} features, "
              f"{assessment['current_rows']} records vs {assessment.get('reference_rows')} "
              f"reference; {decision['action']}: {decision['reason'][:120]})", flush=True)

    walls: list[float] = []
    per_task: dict[str, list[float]] = {}
    if not args.no_dag:
        af = connect(settings)
        wait_for_dag(af, demo.MONITOR_DAG)
        af.dags.patch_dag(demo.MONITOR_DAG, DAGPatchBody(is_paused=False))
        for i in range(args.runs):
            run_id = f"manual__bench_{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            af.dag_runs.trigger_dag_run(demo.MONITOR_DAG, TriggerDAGRunPostBody(
                dag_run_id=run_id, conf={"month": args.month}))
            wait_for_run(af, demo.MONITOR_DAG, run_id, timeout=1800)
            walls.append(time.perf_counter() - started)
            for ti in af.task_instances.get_task_instances(demo.MONITOR_DAG,
                                                           run_id).task_instances:
                if ti.start_date and ti.end_date:
                    per_task.setdefault(ti.task_id, []).append(
                        (ti.end_date - ti.start_date).total_seconds())
            print(f"DAG run {i + 1}: trigger -> success {walls[-1]:.1f}s", flush=True)

    load = os.getloadavg()
    print(f"\nmonitor_model {args.month}, {args.runs} run(s), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (a shared machine: contention figures)")
    for name, values in phases.items():
        print(f"in process {name:<8} median {statistics.median(values):7.1f}s")
    if walls:
        print(f"DAG trigger -> success median {statistics.median(walls):7.1f}s")
        for task, values in per_task.items():
            print(f"  task {task:<20} median {statistics.median(values):7.1f}s")


if __name__ == "__main__":
    main()
