"""The ETL's stages after ingestion, run from the stage table (:mod:`chicago_crime.stages`).

:func:`run_stage` runs one row of the table (one task of ``etl_with_taskflow``); :func:`run_all`
runs them all in order (CLI, notebooks, tests, benchmarks). Every stage reads its source stage
from the lake and writes, under the prefix :mod:`chicago_crime.layout` derives from its name,
its output (the enriched CSV for ``enrich``; train/test Parquet for the others), its fitted
object (skops) and a JSON report, then, last, its manifest (:mod:`chicago_crime.manifest`:
each object's checksum, the digest of its input, the run/attempt that wrote it), and returns a
small dict (status, keys, row counts) that fits in an XCom. A missing or empty input gives
``{"status": "no_data", ...}``, which the DAG turns into a skip.

Every reader here (the next stage, :func:`read_enriched`, :func:`split_raw_window`,
:func:`published_chain` for training) reads a stage only through its manifest: a stage
without one is refused (:class:`~chicago_crime.manifest.StageNotPublished`), and so is an
object whose bytes differ from the manifest or a stage built from another output of its
source than the one published now (:class:`~chicago_crime.manifest.StageIntegrityError`).

``enrich`` (raw window -> enriched CSV) and ``split`` (no fitted object) have their own
runners; every other row is generic: its estimator is fitted on the source's train set and
transforms train and test, or, for a sampler, resamples the train set and copies the test set.

Reruns are idempotent: data, fitted steps and reports are byte-identical for the same inputs
and seed (a report is rewritten only when something other than its timing changed).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from chicago_crime import features as F
from chicago_crime import layout, serialization, stages
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.manifest import (
    Publication,
    Published,
    StageIntegrityError,
    StageNotPublished,
    attempt_identity,
    sha256,
)

log = logging.getLogger(__name__)

OK = "ok"
NO_DATA = "no_data"
ID_COL = "id"
_VOLATILE = ("seconds",)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _ctx(lake: Lake | None, settings: Settings | None) -> tuple[Lake, Settings]:
    s = settings or get_settings()
    return (lake or Lake(settings=s)), s


def _no_data(month: str, stage: str, reason: str) -> dict[str, Any]:
    log.warning("%s %s: no data (%s)", stage, month, reason)
    return {"status": NO_DATA, "stage": stage, "month": month, "reason": reason}


def _balance(y: pd.Series) -> dict[str, Any]:
    positives = int(y.sum())
    return {"rows": len(y), "arrests": positives, "no_arrests": len(y) - positives,
            "arrest_rate": round(positives / len(y), 6) if len(y) else None}


def _write_report(pub: Publication, key: str, report: dict[str, Any]) -> None:
    """Write ``report`` unless the stored one differs only in timings (keeps reruns no-ops)."""
    lake = pub.lake
    if lake.exists(key):
        try:
            old = lake.read_json(key)
        except ValueError:
            old = None
        if isinstance(old, dict):
            strip = lambda r: {k: v for k, v in r.items() if k not in _VOLATILE}  # noqa: E731
            fresh = json.loads(json.dumps(report, sort_keys=True, default=str))
            if strip(old) == strip(fresh):
                pub.record("report", key)
                return
    pub.put("report", key, lake.json_bytes(report), "application/json")


def published(lake: Lake, month: str, stage: str) -> Published:
    """The stage's manifest for ``month`` (:class:`StageNotPublished` when it has none)."""
    return Published.load(lake, layout.stage_prefix(month, stage), stage)


def _published_or_none(lake: Lake, month: str, stage: str, data_key: str) -> Published | None:
    """The published stage; None when it never wrote anything (no data), and
    :class:`StageNotPublished` when its objects are there without a manifest."""
    try:
        return published(lake, month, stage)
    except StageNotPublished:
        if not lake.exists(data_key):
            return None
        raise


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic Parquet (no index, fixed column order)."""
    return Lake.parquet_bytes(df.reset_index(drop=True))


def _parquet(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def _read_stage(lake: Lake, month: str, stage: str,
                ) -> tuple[pd.DataFrame, pd.DataFrame, Published] | None:
    """A published stage's train and test sets (checked against its manifest)."""
    pub = _published_or_none(lake, month, stage, layout.data_key(month, stage, "train"))
    if pub is None:
        return None
    return _parquet(pub.read("train")), _parquet(pub.read("test")), pub


def _xy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    X = df.drop(columns=[c for c in (R.TARGET, ID_COL) if c in df.columns])
    return X, df[R.TARGET].astype(bool)


def _join(X: pd.DataFrame, y: pd.Series) -> pd.DataFrame:
    out = X.reset_index(drop=True).copy()
    out[R.TARGET] = y.to_numpy(dtype=bool)
    return out


def _read_raw_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])


def read_window(lake: Lake, month: str, expected_sha256: str | None = None,
                ) -> pd.DataFrame | None:
    """The raw 12-month window as strings (None when missing); with ``expected_sha256`` (the
    checksum the ``enrich`` manifest recorded) a window rewritten since is refused."""
    return _window(lake, month, expected_sha256)[0]


def _window(lake: Lake, month: str, expected_sha256: str | None = None,
            ) -> tuple[pd.DataFrame | None, str | None]:
    key = layout.window_key(month)
    if not lake.exists(key):
        if expected_sha256:
            raise StageIntegrityError(f"{lake.uri(key)} is gone; rerun the ETL for {month}")
        return None, None
    data = lake.get_bytes(key)
    checksum = sha256(data)
    if expected_sha256 and checksum != expected_sha256:
        raise StageIntegrityError(f"{lake.uri(key)} changed since the enrich stage read it: "
                                  f"rerun the ETL for {month}")
    return _read_raw_csv(data), checksum


def read_stations(lake: Lake, month: str) -> pd.DataFrame:
    key = layout.raw_stations_key(month)
    if not lake.exists(key):
        raise FileNotFoundError(f"police stations missing at {lake.uri(key)} (run ingestion)")
    return lake.read_csv(key, dtype=str, keep_default_na=False, na_values=[""])


def _enriched_frame(data: bytes) -> pd.DataFrame:
    dtypes: dict[str, Any] = {c: str for c in (ID_COL, "date", *F.CATEGORICAL_COLUMNS)}
    dtypes.update({c: float for c in F.NUMERIC_COLUMNS})
    dtypes[R.TARGET] = str
    df = pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=False, na_values=[""],
                     float_precision="round_trip")
    for col in F.CATEGORICAL_COLUMNS:
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def _read_enriched(lake: Lake, month: str) -> tuple[pd.DataFrame, Published] | None:
    pub = _published_or_none(lake, month, stages.ENRICH, layout.enriched_key(month))
    return None if pub is None else (_enriched_frame(pub.read("enriched")), pub)


def read_enriched(lake: Lake, month: str) -> pd.DataFrame | None:
    """The published enriched CSV with the enricher's dtypes (None when missing; refused when
    it is not published or does not match its manifest)."""
    out = _read_enriched(lake, month)
    return None if out is None else out[0]


def published_chain(lake: Lake, month: str) -> dict[str, Published]:
    """Every stage of ``month``, published and built from the published output of the stage
    before it (training trusts the month only then)."""
    chain: dict[str, Published] = {}
    for stage in stages.STAGES:
        chain[stage.name] = published(lake, month, stage.name)
        source = stages.source(stage.name)
        if source is not None:
            chain[stage.name].require_source(source.name, chain[source.name].digest)
    return chain


def _publication(lake: Lake, month: str, stage: stages.Stage, attempt: dict[str, Any] | None,
                 sources: dict[str, str]) -> Publication:
    pub = Publication(lake, layout.stage_prefix(month, stage.name), stage.name, month,
                      attempt or attempt_identity(), sources=sources)
    pub.claim()
    return pub


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def _enrich(stage: stages.Stage, month: str, lake: Lake, settings: Settings,
            attempt: dict[str, Any] | None) -> dict[str, Any]:
    """Raw window -> ``1-enriched-data/crimes_enriched_{stamp}.csv`` (+ fitted enricher)."""
    started = time.perf_counter()
    raw, window_sha = _window(lake, month)
    if raw is None or window_sha is None:
        return _no_data(month, stage.name, f"missing {layout.window_key(month)}")
    if raw.empty:
        return _no_data(month, stage.name, "the window has no rows")
    enricher = stage.make(settings.random_seed, read_stations(lake, month)).fit()
    enriched = enricher.transform(raw)
    target = pd.Series(R.labels(raw))
    out = pd.concat([raw[[c for c in (ID_COL, "date") if c in raw.columns]].reset_index(drop=True),
                     enriched.reset_index(drop=True)], axis=1)
    out[R.TARGET] = target.map({1.0: "true", 0.0: "false"})
    keys = {"enriched": layout.enriched_key(month),
            "fitted": layout.fitted_key(month, stage.name),
            "report": layout.report_key(month, stage.name)}
    pub = _publication(lake, month, stage, attempt, {"window": window_sha})
    pub.put("enriched", keys["enriched"], out.to_csv(index=False).encode("utf-8"), "text/csv")
    pub.put("fitted", keys["fitted"], serialization.dumps(enricher))
    report = {
        "stage": stage.name, "description": stage.description, "month": month,
        "source": layout.window_key(month),
        "outputs": {k: v for k, v in keys.items() if k != "report"},
        "rows_in": len(raw), "rows_out": len(out), "columns": list(out.columns),
        "missing_coordinates": int(enriched[F.DIST_COL].isna().sum()),
        "missing_target": int(target.isna().sum()),
        **enricher.report(),
        "class_balance": _balance(target.dropna().astype(bool)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_report(pub, keys["report"], report)
    keys["manifest"] = pub.manifest_key
    pub.publish()
    return {"status": OK, "stage": stage.name, "month": month, "rows": {"all": len(out)},
            "keys": keys, "columns": report["columns"], "seconds": report["seconds"]}


def split_positions(y: pd.Series, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/test positions (sorted) for a boolean target."""
    positions = np.arange(len(y))
    train, test = train_test_split(positions, test_size=settings.test_size,
                                   stratify=y.to_numpy(), random_state=settings.random_seed)
    return np.sort(train), np.sort(test)


def _split(stage: stages.Stage, month: str, lake: Lake, settings: Settings,
           attempt: dict[str, Any] | None) -> dict[str, Any]:
    """Enriched CSV -> ``split/{train,test}.parquet``: 80/20 stratified on ``arrest``, seeded."""
    started = time.perf_counter()
    enriched = _read_enriched(lake, month)
    if enriched is None:
        return _no_data(month, stage.name, f"missing {layout.enriched_key(month)}")
    df, source = enriched
    rows_in = len(df)
    df = df[df[R.TARGET].isin(["true", "false"])].reset_index(drop=True)
    y = df[R.TARGET] == "true"
    if len(df) < 10 or y.nunique() < 2 or min(y.sum(), (~y).sum()) < 2:
        return _no_data(month, stage.name, f"{len(df)} labelled rows, too few to split")
    train_pos, test_pos = split_positions(y, settings)
    columns = [c for c in (ID_COL,) if c in df.columns] + list(F.ENRICHED_COLUMNS)
    frame = df[columns].copy()
    frame[R.TARGET] = y.to_numpy()
    train, test = frame.iloc[train_pos], frame.iloc[test_pos]
    pub = _publication(lake, month, stage, attempt, {source.stage: source.digest})
    return _finish(pub, started, train, test, fitted=None,
                   source=[layout.enriched_key(month)], rows_in={"all": rows_in},
                   details={"test_size": settings.test_size, "seed": settings.random_seed,
                            "dropped_unlabelled": rows_in - len(df)})


def _finish(pub: Publication, started: float, train: pd.DataFrame,
            test: pd.DataFrame, fitted: Any, source: list[str], rows_in: dict[str, int],
            details: dict[str, Any] | None = None, test_bytes: bytes | None = None,
            ) -> dict[str, Any]:
    """Write a stage's train/test/fitted object and report, then publish its manifest."""
    month, stage = pub.month, stages.get(pub.stage)
    keys = {part: layout.data_key(month, stage.name, part) for part in ("train", "test")}
    parquet = "application/vnd.apache.parquet"
    pub.put("train", keys["train"], _parquet_bytes(train), parquet)
    pub.put("test", keys["test"], test_bytes if test_bytes is not None
            else _parquet_bytes(test), parquet)
    if fitted is not None:
        keys["fitted"] = layout.fitted_key(month, stage.name)
        pub.put("fitted", keys["fitted"], serialization.dumps(fitted))
    keys["report"] = layout.report_key(month, stage.name)
    report = {
        "stage": stage.name, "description": stage.description, "month": month,
        "source": source, "outputs": {k: v for k, v in keys.items() if k != "report"},
        "rows_in": rows_in, "rows_out": {"train": len(train), "test": len(test)},
        "columns": [c for c in train.columns if c not in (R.TARGET, ID_COL)],
        "class_balance": {"train": _balance(train[R.TARGET].astype(bool)),
                          "test": _balance(test[R.TARGET].astype(bool))},
        "details": details or {},
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_report(pub, keys["report"], report)
    keys["manifest"] = pub.manifest_key
    pub.publish()
    return {"status": OK, "stage": stage.name, "month": month,
            "rows": {"train": len(train), "test": len(test)}, "keys": keys,
            "columns": report["columns"], "seconds": report["seconds"]}


def _fit(stage: stages.Stage, month: str, lake: Lake, settings: Settings,
         attempt: dict[str, Any] | None) -> dict[str, Any]:
    """Fit the stage's estimator on its source's train set; transform train and test with it
    (a sampler resamples the train set and leaves the test set's bytes as they are)."""
    started = time.perf_counter()
    source = stages.source(stage.name)
    assert source is not None, stage
    data = _read_stage(lake, month, source.name)
    if data is None:
        return _no_data(month, stage.name, f"missing {source.name} stage output")
    train, test, source_pub = data
    X_train, y_train = _xy(train)
    sources = [layout.data_key(month, source.name, part) for part in ("train", "test")]
    step = stage.make(settings.random_seed)
    if hasattr(step, "fit_resample"):
        X_res, y_res = step.fit_resample(X_train, y_train)
        out_train, out_test = _join(X_res, pd.Series(y_res)), test
        test_bytes: bytes | None = source_pub.read("test")
        details = {**step.report(), "test_resampled": False}
    else:
        X_test, y_test = _xy(test)
        out_train = _join(step.fit_transform(X_train, y_train), y_train)
        out_test = _join(step.transform(X_test), y_test)
        test_bytes, details = None, step.report()
    pub = _publication(lake, month, stage, attempt, {source.name: source_pub.digest})
    return _finish(pub, started, out_train, out_test, fitted=step,
                   source=sources, rows_in={"train": len(train), "test": len(test)},
                   details=details, test_bytes=test_bytes)


_Runner = Callable[[stages.Stage, str, Lake, Settings, dict[str, Any] | None], dict[str, Any]]
_RUNNERS: dict[str, _Runner] = {
    stages.ENRICH: _enrich, stages.SPLIT: _split,
}


def run_stage(name: str, month: str, lake: Lake | None = None,
              settings: Settings | None = None,
              attempt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage of the table for ``month`` (what its DAG task does).

    ``attempt`` identifies the writer in the stage's manifest
    (:func:`chicago_crime.manifest.attempt_identity`; the DAG passes its task instance).
    """
    lake, settings = _ctx(lake, settings)
    stage = stages.get(name)
    return _RUNNERS.get(stage.name, _fit)(stage, month, lake, settings, attempt)


def run_all(month: str, lake: Lake | None = None,
            settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage in order, stopping at the first without data."""
    lake, settings = _ctx(lake, settings)
    results: dict[str, dict[str, Any]] = {}
    for stage in stages.STAGES:
        results[stage.name] = run_stage(stage.name, month, lake, settings)
        if results[stage.name]["status"] != OK:
            break
    return results


def split_raw_window(month: str, lake: Lake | None = None, settings: Settings | None = None,
                     ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The raw window's records split exactly as the ``split`` stage split them (by ``id``).

    For training the served pipeline on raw records with the ETL's train/test partition.
    """
    lake, settings = _ctx(lake, settings)
    data = _read_stage(lake, month, stages.SPLIT)
    if data is None:
        return None
    enrich = published(lake, month, stages.ENRICH)
    data[2].require_source(stages.ENRICH, enrich.digest)
    raw = read_window(lake, month, expected_sha256=enrich.sources.get("window"))
    if raw is None:
        return None
    ids = raw[ID_COL].astype(str)
    train_ids, test_ids = (set(d[ID_COL].astype(str)) for d in data[:2])
    return (raw[ids.isin(train_ids)].reset_index(drop=True),
            raw[ids.isin(test_ids)].reset_index(drop=True))


# --------------------------------------------------------------------------------------------
# data-quality run in MLflow
# --------------------------------------------------------------------------------------------
def load_reports(month: str, lake: Lake | None = None,
                 settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """The stage reports stored in the lake for ``month`` (missing stages are left out)."""
    lake, _ = _ctx(lake, settings)
    out: dict[str, dict[str, Any]] = {}
    for stage in stages.NAMES:
        key = layout.report_key(month, stage)
        if lake.exists(key):
            out[stage] = lake.read_json(key)
    return out


def _quality_metrics(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for stage, rep in reports.items():
        if not isinstance(rep, Mapping):
            continue
        if "seconds" in rep and rep["seconds"] is not None:
            metrics[f"seconds_{stage}"] = float(rep["seconds"])
        for direction in ("rows_in", "rows_out"):
            value = rep.get(direction)
            if isinstance(value, Mapping):
                for part, n in value.items():
                    metrics[f"{direction}_{stage}_{part}"] = float(n)
            elif isinstance(value, int | float):
                metrics[f"{direction}_{stage}"] = float(value)
        balance = rep.get("class_balance")
        if isinstance(balance, Mapping) and "arrest_rate" in balance:
            if balance["arrest_rate"] is not None:
                metrics[f"arrest_rate_{stage}"] = float(balance["arrest_rate"])
        elif isinstance(balance, Mapping):
            for part, b in balance.items():
                if isinstance(b, Mapping) and b.get("arrest_rate") is not None:
                    metrics[f"arrest_rate_{stage}_{part}"] = float(b["arrest_rate"])
        for key, value in rep.items():  # ingest report: invalid / quarantined / missing counts
            if not any(w in key for w in ("invalid", "quarantin", "missing", "duplicate")):
                continue
            if isinstance(value, Mapping):  # e.g. per-month counts: log their sum
                numbers = [v for v in value.values()
                           if isinstance(v, int | float) and not isinstance(v, bool)]
                value = sum(numbers) if numbers else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{stage}_{key}"] = float(value)
    last = stages.STAGES[-1].name
    if f"arrest_rate_{stages.SPLIT}_train" in metrics:
        metrics["arrest_rate_before_balancing"] = metrics[f"arrest_rate_{stages.SPLIT}_train"]
    if f"arrest_rate_{last}_train" in metrics:
        metrics["arrest_rate_after_balancing"] = metrics[f"arrest_rate_{last}_train"]
    metrics["seconds_total"] = sum(v for k, v in metrics.items() if k.startswith("seconds_"))
    return metrics


def _resolve_reports(reports: dict[str, Any], lake: Lake | None,
                     settings: Settings) -> dict[str, Any]:
    """Replace stage results (``{"status", "keys": {"report": ...}}``) by their stored report."""
    out: dict[str, Any] = {}
    for stage, rep in reports.items():
        key = (rep.get("keys") or {}).get("report") if isinstance(rep, Mapping) else None
        if key and "class_balance" not in rep:
            lake = lake or Lake(settings=settings)
            if lake.exists(key):
                out[stage] = lake.read_json(key)
                continue
        out[stage] = rep
    return out


def log_quality_run(month: str, reports: Mapping[str, Mapping[str, Any]] | None = None,
                    settings: Settings | None = None, lake: Lake | None = None,
                    ingest_report: Mapping[str, Any] | None = None) -> str:
    """Log one data-quality run for ``month`` in ``settings.etl_experiment``; return its id.

    ``reports`` maps stage -> report (the stage results or the stored reports; read from the
    lake when omitted). Each DAG run logs a new run named ``etl-YYYY-MM`` tagged
    ``month=YYYY-MM`` and ``latest=true``; earlier runs of that month are re-tagged
    ``latest=false``, so ``tags.month = '...' and tags.latest = 'true'`` finds the current one.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    settings = settings or get_settings()
    if reports is None:
        reports = load_reports(month, lake, settings)
    reports = _resolve_reports(dict(reports), lake, settings)
    if ingest_report is not None:
        reports["ingest"] = ingest_report
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.etl_experiment)
    experiment_id = experiment.experiment_id if experiment is not None \
        else client.create_experiment(settings.etl_experiment)
    previous = client.search_runs(
        [experiment_id], filter_string=f"tags.month = '{month}' and tags.latest = 'true'")
    run = client.create_run(experiment_id, run_name=f"etl-{month}",
                            tags={"month": month, "latest": "true", "kind": "data-quality"})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in sorted(_quality_metrics(reports).items())]
    params = [Param("month", month), Param("random_seed", str(settings.random_seed)),
              Param("test_size", str(settings.test_size)),
              Param("stages", ",".join(s for s in stages.NAMES if s in reports))]
    selected = (reports.get(stages.STAGES[-1].name) or {}).get("columns")
    if selected:
        params.append(Param("selected_features", ",".join(selected)[:6000]))
    client.log_batch(run_id, metrics=metrics, params=params,
                     tags=[RunTag("window", layout.window_key(month))])
    client.log_dict(run_id, {k: dict(v) for k, v in reports.items()}, "reports.json")
    client.set_terminated(run_id)
    for old in previous:
        client.set_tag(old.info.run_id, "latest", "false")
        client.set_tag(old.info.run_id, "superseded_by", run_id)
    return run_id
