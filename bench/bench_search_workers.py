"""Benchmark: wall time of one training search with one worker and with two.

The search of ``train_model`` is split into shares that run as mapped Airflow tasks on the
Celery workers, all against one Optuna study in RDB storage (``chicago_crime.model
.shared_search``). This measures that scaling without a stack: a month's search rows come from
the real ETL (in-process S3, moto); then for 1 and 2 workers a fresh study is created in the
storage and each worker is a separate, freshly spawned process (one OpenMP thread, as the
stack's services run: ``OMP_NUM_THREADS=1``) that opens the shared study with its share's
seed and runs its share of the budget, exactly as ``run_share`` does. Prints the wall time
per repeat, the median and the speed-up.

    .venv/bin/python bench/bench_search_workers.py [--trials 8] [--repeats 1]
        [--months 3] [--storage sqlite:///... | postgresql+psycopg2://...] [--data DIR]

The figure depends on free cores: on a 2-core machine two workers can at best halve it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy/scikit-learn load OpenMP

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHICAGO_DATA_DIR", REPO.parent / "shared" / "data" / "chicago"))
MONTH = "2018-06"

_DATA: Any = None  # the search rows, handed to each worker process once


def _init(data: Any) -> None:
    global _DATA
    _DATA = data


def _share(args: tuple[str, str, int, int, int]) -> int:
    from chicago_crime.model import tune

    name, storage, index, trials, seed = args
    study = tune.open_study(name, storage, seed + index, _DATA.families)
    return tune.run_trials(study, _DATA, n_trials=trials, timeout=None, folds=3, seed=seed,
                           log_to_mlflow=False, user_attrs={"share": index})


def search_seconds(storage: str, workers: int, trials: int, seed: int, tag: str) -> float:
    """One search of ``trials`` trials over ``workers`` processes sharing a new study."""
    from chicago_crime.model import shared_search, tune

    name = f"bench-{tag}-{workers}w-{os.urandom(3).hex()}"
    tune.open_study(name, storage, seed, _DATA.families)
    shares = shared_search.split_budget(trials, workers)
    started = time.perf_counter()
    # spawn, not fork: a forked child of a process that already ran OpenMP (the ETL) hangs
    with mp.get_context("spawn").Pool(len(shares), initializer=_init,
                                      initargs=(_DATA,)) as pool:
        pool.map(_share, [(name, storage, i, n, seed) for i, n in enumerate(shares)])
    return time.perf_counter() - started


def main() -> None:
    global _DATA
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--month", default=MONTH)
    parser.add_argument("--months", type=int, default=3, help="window length (months)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-rows", type=int, default=None,
                        help="earlier train rows per trial (default: tune.SEARCH_MAX_ROWS)")
    parser.add_argument("--storage", default=None,
                        help="Optuna RDB URL (default: a SQLite file in a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the in-process S3's requests

    from moto.server import ThreadedMotoServer

    from chicago_crime import etl
    from chicago_crime.config import load_settings
    from chicago_crime.devtools.seed import seed_window_from_exports
    from chicago_crime.lake import Lake
    from chicago_crime.model import train, tune

    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    server = ThreadedMotoServer(port=0)
    server.start()
    try:
        settings = load_settings(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            aws_endpoint_url_s3=f"http://127.0.0.1:{server._server.server_port}",
            data_repo_bucket_name="bench", mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        lake = Lake(settings=settings)
        lake.ensure_bucket()
        started = time.perf_counter()
        seed_window_from_exports(lake, Path(args.data), args.month, months=args.months)
        results = etl.run_all(args.month, lake, settings)
        assert all(r["status"] == etl.OK for r in results.values()), results
        month = train.load_month(args.month, lake, settings)
        _DATA = train.search_data(month, args.max_rows or tune.SEARCH_MAX_ROWS,
                                  settings.random_seed)
        print(f"window: {args.months} months to {args.month}, search rows {len(_DATA.y)} "
              f"(objective {'temporal' if _DATA.newest is not None else 'cv'}, families "
              f"{_DATA.families}); ETL + load {time.perf_counter() - started:.0f} s")
    finally:
        server.stop()
    storage = args.storage or f"sqlite:///{tmp}/optuna.db"
    figures: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for workers in (1, 2):
            seconds = search_seconds(storage, workers, args.trials, settings.random_seed,
                                     f"r{repeat}")
            figures[workers].append(seconds)
            print(f"repeat {repeat + 1}: {workers} worker(s), {args.trials} trials: "
                  f"{seconds:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    one, two = (statistics.median(figures[w]) for w in (1, 2))
    print(f"median search wall time, {args.trials} trials: 1 worker {one:.1f} s, "
          f"2 workers {two:.1f} s, speed-up x{one / two:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
