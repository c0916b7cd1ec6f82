"""Benchmark: train on the 12 months to 2017-12, score 2018-01..06 (a temporal holdout).

``--month 2018-05 --holdout 2018-06`` is the demo's window (the 12 months before 2018-06)
scored on the month after it.

Runs the production code path (ETL stage functions -> ``train.run_training``) on an in-process
S3 (moto) and a throwaway SQLite MLflow, so it needs no running stack. Prints ROC AUC, PR AUC,
Brier and expected calibration error of the registered model and of both baselines (IUCR
rate lookup, plain native-categorical gradient boosting; fitted on the same train split) on
the holdout, the run's own temporal evaluation, plus wall times.
Targets: ROC AUC >= 0.89, ECE <= 0.02.

    .venv/bin/python bench/bench_train.py [--trials N] [--timeout S] [--data DIR]
        [--month YYYY-MM] [--holdout YYYY-MM ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHICAGO_DATA_DIR", REPO.parent / "shared" / "data" / "chicago"))
TRAIN_MONTH = "2017-12"
HOLDOUT = ("2018-01", "2018-02", "2018-03", "2018-04", "2018-05", "2018-06")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--trials", type=int, default=None, help="default: SEARCH_TRIALS")
    parser.add_argument("--timeout", type=float, default=None,
                        help="search budget in seconds (default: SEARCH_TIMEOUT_SECONDS)")
    parser.add_argument("--month", default=TRAIN_MONTH,
                        help="the window's last month (training trains for it)")
    parser.add_argument("--holdout", nargs="+", default=list(HOLDOUT),
                        help="months scored after the window")
    args = parser.parse_args()
    month, holdout_months = args.month, tuple(args.holdout)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("chicago_crime.model.tune").setLevel(logging.INFO)

    from moto.server import ThreadedMotoServer

    from chicago_crime import etl
    from chicago_crime import record as R
    from chicago_crime.config import load_settings
    from chicago_crime.devtools.seed import seed_window_from_exports
    from chicago_crime.lake import Lake
    from chicago_crime.model import evaluate as ev
    from chicago_crime.model import registry, train
    from chicago_crime.portal import crimes_export_path, read_export

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            aws_access_key_id="bench", aws_secret_access_key="bench",
            aws_endpoint_url_s3=f"http://{host}:{port}", data_repo_bucket_name="bench",
            mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        )
        lake = Lake(settings=settings)
        lake.ensure_bucket()
        t0 = time.perf_counter()
        seeded = seed_window_from_exports(lake, args.data, month, months=12)
        results = etl.run_all(month, lake, settings)
        etl_seconds = time.perf_counter() - t0
        assert all(r["status"] == etl.OK for r in results.values()), results
        t1 = time.perf_counter()
        out = train.run_training(month, settings, lake, trials=args.trials,
                                 timeout=args.timeout)
        train_seconds = time.perf_counter() - t1

        model = registry.load_version(settings.model_name, out["version"])
        raw_train, _ = etl.split_raw_window(month, lake, settings)
        baseline = ev.IucrRateBaseline().fit(raw_train, R.labels(raw_train))
        holdout = pd.concat([read_export(crimes_export_path(args.data, m)) for m in holdout_months],
                            ignore_index=True)
        holdout = holdout[holdout["arrest"].isin(["true", "false"])].reset_index(drop=True)
        y = R.labels(holdout).astype(int)
        t2 = time.perf_counter()
        p_model = model.predict_proba(R.model_frame(holdout))[:, 1]
        score_seconds = time.perf_counter() - t2
        p_base = baseline.predict_proba(holdout)[:, 1]
        enricher = model.steps[0][1] if hasattr(model, "steps") else None
        native = ev.NativeBoostingBaseline(enricher, settings.random_seed).fit(
            raw_train, R.labels(raw_train).astype(int))
        p_native = native.predict_proba(holdout)[:, 1]
    server.stop()

    rows = []
    for name, p in (("model", p_model), ("iucr_rate_baseline", p_base),
                    ("plain_native_hgb_baseline", p_native)):
        m = ev.binary_metrics(y, p, out["threshold"])
        rows.append({"predictor": name, "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"],
                     "brier": m["brier"], "ece": m["ece"], "log_loss": m["log_loss"],
                     f"f1@{out['threshold']:.3f}": m["f1"]})
    table = pd.DataFrame(rows).set_index("predictor")
    print(f"\ntrain window: 12 months to {month} ({seeded['rows']:,} records, "
          f"80% train split); holdout {holdout_months[0]}..{holdout_months[-1]}: "
          f"{len(y):,} records, "
          f"arrest rate {np.mean(y):.3f}")
    print(f"best config: {json.dumps(out['best_params'])} ({out['trials']} trials)")
    print(f"in-window test split: {json.dumps(out['metrics'])}")
    print(f"temporal evaluation in the window (refit before its newest month, scored on it): "
          f"{json.dumps(out['temporal'])}")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    model_row = table.loc["model"]
    print(f"targets: ROC AUC >= 0.89: {'PASS' if model_row['roc_auc'] >= 0.89 else 'FAIL'}; "
          f"ECE <= 0.02: {'PASS' if model_row['ece'] <= 0.02 else 'FAIL'}")
    print(f"wall: ETL {etl_seconds:.1f} s, training (search + fit + eval + log) "
          f"{train_seconds:.1f} s (search {out.get('search_seconds', float('nan'))}), "
          f"scoring {len(y):,} raw records {score_seconds:.1f} s")


if __name__ == "__main__":
    main()
