"""Month-by-month monitoring of the champion: data drift, prediction drift, performance decay.

One code path for the ``monitor_model`` DAG, the CLI and the benchmark:

1. :func:`assess` a month against the champion:

   * **the current records** are the month's raw partition in the lake
     (``0-raw-data/monthly-data/{month}/crimes.csv``, what ingestion validated), or records
     given by the caller;
   * **the reference** is the champion's training window (its model card's ``month``,
     ``window_start``, ``window_end``): the raw 12-month window of that month in the lake,
     restricted to the card's dates and sampled to ``MONITOR_REFERENCE_ROWS``;
   * both go through the champion's own fitted steps, so drift is measured on what the model
     sees: every **enriched feature** (the enricher's output) and every **model input** (the
     classifier's selected, encoded features), plus **prediction drift**: the champion's
     probabilities for the month, and the probabilities the API logged for records of the
     month (the prediction log, when there is one);
   * **decay**, since the month's records carry their label (``arrest``): the champion scores
     the labelled records it never trained on (when the month lies inside its window, only
     those outside its train split) and ROC AUC, Brier and ECE are compared with the card's
     own test figures; logged predictions joined by record id (``record_id`` = the record's
     ``id``) are scored too.

   Calendar features (``month``, ``season`` and their encodings) are reported but never count
   as drift: one month against a 12-month window always "drifts" on them.
2. :func:`decide`: retrain when there is no champion, when a feature drifts (PSI >=
   ``MONITOR_PSI_THRESHOLD`` and p < ``MONITOR_P_VALUE``), when ROC AUC dropped by
   ``MONITOR_AUC_DROP`` or ECE rose by ``MONITOR_ECE_RISE``; otherwise "no action". Every
   reason is spelled out.
3. :func:`publish`: one MLflow run per assessment in ``MONITOR_EXPERIMENT`` (metrics
   ``drift_psi/<feature>``, ``monthly_roc_auc``, ``monthly_brier``, ``monthly_ece``; artifacts
   ``report.html`` and ``summary.json``), the same two files in the lake under
   ``3-monitoring/{month}/`` with a manifest written last, and gauges pushed to the Prometheus
   Pushgateway when ``PUSHGATEWAY_URL`` is set (a failed push is logged, never fatal).

Reruns are idempotent: the lake's objects are rewritten whole, each run logs a new MLflow run
tagged ``latest=true`` (earlier runs of the month are re-tagged ``latest=false``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from chicago_crime import layout, stages
from chicago_crime import record as R
from chicago_crime.config import Settings, get_settings
from chicago_crime.lake import Lake
from chicago_crime.model import evaluate as ev
from chicago_crime.model import registry
from chicago_crime.monitoring import drift as D

log = logging.getLogger(__name__)

RETRAIN, NO_ACTION = "retrain", "none"
NO_CHAMPION = "no champion"
#: Features that follow the calendar: reported, never counted as drift.
SEASONAL = ("month", "season")
#: Fewest labelled records (of both classes) for the decay figures.
MIN_LABELLED = 200
#: Fewest distinct records among the champion's logged predictions for their drift to be
#: assessed: a handful of demo or test requests is no population.
MIN_LOGGED = 500
#: Decay metrics compared with the champion's card (name -> card metric).
DECAY_METRICS = ("roc_auc", "brier", "ece")
ENRICHED, INPUT, PREDICTION = "enriched/", "input/", "prediction/"
CHAMPION_SCORES, LOGGED_SCORES = "prediction/champion", "prediction/logged"
SUMMARY_FILE, REPORT_FILE = "summary.json", "report.html"


class MonitoringDataMissing(FileNotFoundError):
    """The month's records (or the champion's reference window) are not in the lake."""


def is_seasonal(feature: str) -> bool:
    """Whether a drift feature (``enriched/month``, ``input/season_Summer``) is a calendar
    feature, which one month never matches against a year."""
    base = feature.rsplit("/", 1)[-1]
    return base in SEASONAL or base.startswith(tuple(f"{s}_" for s in SEASONAL))


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _in_dates(records: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    """Records dated from ``first`` to ``last`` (``YYYY-MM-DD``, inclusive)."""
    days = records["date"].astype(str).str[:10]
    return records[(days >= first) & (days <= last)].reset_index(drop=True)


def month_records(lake: Lake, month: str) -> pd.DataFrame:
    """The month's raw records (strings, as ingestion validated them)."""
    from chicago_crime.ingest import read_raw_csv

    key = layout.raw_crimes_key(month)
    if not lake.exists(key):
        raise MonitoringDataMissing(
            f"{month}: no records at {lake.uri(key)}; run etl_with_taskflow for the month first")
    start, end = layout.month_bounds(month)
    last = (end - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    return _in_dates(read_raw_csv(lake, key), start.strftime("%Y-%m-%d"), last)


def reference_records(lake: Lake, card: registry.ModelCard, settings: Settings,
                      ) -> pd.DataFrame:
    """The champion's training window (its card's month and dates), sampled."""
    from chicago_crime import etl

    if not card.month:
        raise MonitoringDataMissing(f"champion v{card.version} has no month on its card")
    window = etl.read_window(lake, card.month)
    if window is None:
        key = lake.uri(layout.window_key(card.month))
        raise MonitoringDataMissing(f"the champion's window {key} is gone; rerun "
                                    f"etl_with_taskflow for {card.month}")
    if card.window_start and card.window_end:
        window = _in_dates(window, card.window_start, card.window_end)
    rows = settings.monitor_reference_rows
    if len(window) > rows:
        window = window.sample(n=rows, random_state=settings.random_seed).sort_index()
    return window.reset_index(drop=True)


def trained_ids(lake: Lake, card: registry.ModelCard) -> set[str] | None:
    """Ids of the records the champion was trained on (its month's train split), or None
    when the split is no longer published."""
    import io

    from chicago_crime import etl
    from chicago_crime.manifest import StageIntegrityError, StageNotPublished

    if not card.month:
        return None
    try:
        data = etl.published(lake, card.month, stages.SPLIT).read("train")
    except (StageNotPublished, StageIntegrityError) as exc:
        log.warning("champion's train split unavailable (%s)", exc)
        return None
    return set(pd.read_parquet(io.BytesIO(data), columns=[etl.ID_COL])[etl.ID_COL].astype(str))


def logged_predictions(settings: Settings, month: str) -> tuple[pd.DataFrame | None, str]:
    """Predictions the API logged for records of ``month`` (``None`` and why when there are
    none).

    The log is read from the month's first day to now (a record is scored when it is
    reported, or later: the demo scores 2018 records today) and kept to records dated in the
    month.
    """
    from chicago_crime.monitoring.prediction_log import read_predictions

    start, end = layout.month_bounds(month)
    try:
        frame = read_predictions(settings, start, max(datetime.now(UTC).replace(tzinfo=None),
                                                      end))
    except Exception as exc:  # the log is optional evidence: monitoring goes on without it
        log.warning("could not read the prediction log: %s", exc)
        return None, f"prediction drift: prediction log unreadable ({type(exc).__name__})"
    if frame is not None and len(frame) and "date" in frame.columns:
        days = frame["date"].astype(str).str[:7]
        frame = frame[days == month]
    if frame is None or not len(frame):
        return None, "prediction drift: no logged predictions"
    return frame.reset_index(drop=True), f"{len(frame)} logged predictions"


def distinct_records(logged: pd.DataFrame) -> pd.DataFrame:
    """One logged prediction per distinct model input (the latest).

    A client's retries, a load test or a demo posting one record again and again (even under
    fresh portal ids) would otherwise be a "population" of one input and look like prediction
    drift. Inputs are compared on the fields the model reads, not on the id: two reports with
    the same fields get the same score anyway.
    """
    fields = [name for name in R.MODEL_FIELDS if name in logged.columns]
    if not len(logged) or not fields:
        return logged
    if "logged_at" in logged.columns:
        logged = logged.sort_values("logged_at", kind="stable")
    return logged[~logged.duplicated(subset=fields, keep="last")]


# --------------------------------------------------------------------------------------------
# the champion's view of records
# --------------------------------------------------------------------------------------------
def champion(settings: Settings, client: Any = None) -> tuple[registry.ModelCard, Any] | None:
    """The champion's card and loaded model (through the registry's safe loader), or None."""
    client = client or registry.client_for(settings)
    card = registry.card(client, settings.model_name, settings.champion_alias)
    if card is None:
        return None
    model = registry.load_version(settings.model_name, card.version, client=client)
    return card, model


def views(model: Any, records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Enriched features, model inputs and probabilities of raw records, through the served
    pipeline's own fitted steps."""
    frame = R.model_frame(records)
    enriched = model.named_steps[stages.ENRICH].transform(frame)
    inputs = model[:-1].transform(frame)
    probabilities = model[-1].predict_proba(inputs)[:, 1]
    return enriched.reset_index(drop=True), pd.DataFrame(inputs).reset_index(drop=True), \
        np.asarray(probabilities, dtype=float)


# --------------------------------------------------------------------------------------------
# assess
# --------------------------------------------------------------------------------------------
def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _scores(y: np.ndarray, p: np.ndarray, threshold: float | None) -> dict[str, Any]:
    metrics = ev.binary_metrics(y, p, 0.5 if threshold is None else threshold)
    return {k: _finite(metrics[k]) for k in (*DECAY_METRICS, "arrest_rate",
                                             "mean_probability")} | {"rows": len(y)}


def decay(card: registry.ModelCard, labelled: pd.DataFrame, probabilities: np.ndarray,
          trained: set[str] | None, logged: pd.DataFrame | None) -> dict[str, Any]:
    """ROC AUC, Brier and ECE of the champion on the month's labelled records it never
    trained on, against its card's test figures (and of the logged predictions joined by id)."""
    ids = labelled["id"].astype(str)
    unseen = ~ids.isin(trained) if trained is not None else pd.Series(True, index=ids.index)
    y = R.labels(labelled).astype(int)
    mask = unseen.to_numpy()
    out: dict[str, Any] = {
        "labelled_rows": len(labelled), "unseen_rows": int(mask.sum()),
        "excluded_trained_rows": int((~mask).sum()),
        "champion": {k: _finite(card.metrics.get(k)) for k in DECAY_METRICS},
        "note": None if trained is not None else
        "the champion's train split is not published: every labelled record is scored",
    }
    y_eval, p_eval = y[mask], probabilities[mask]
    if len(y_eval) < MIN_LABELLED or len(set(y_eval.tolist())) < 2:
        out["monthly"] = None
        out["note"] = (f"{len(y_eval)} labelled records the champion never trained on "
                       f"(fewer than {MIN_LABELLED}, or one class): decay not assessed")
    else:
        out["monthly"] = _scores(y_eval, p_eval, card.threshold)
        champ, month = out["champion"], out["monthly"]
        out["auc_drop"] = None if champ["roc_auc"] is None or month["roc_auc"] is None \
            else champ["roc_auc"] - month["roc_auc"]
        out["ece_rise"] = None if champ["ece"] is None or month["ece"] is None \
            else month["ece"] - champ["ece"]
        out["brier_rise"] = None if champ["brier"] is None or month["brier"] is None \
            else month["brier"] - champ["brier"]
    out["logged"] = None
    if logged is not None and "record_id" in logged.columns and "probability" in logged.columns:
        latest = logged.sort_values("logged_at").drop_duplicates("record_id", keep="last") \
            if "logged_at" in logged.columns else logged.drop_duplicates("record_id")
        joined = pd.DataFrame({"id": ids, "y": y}).merge(
            latest.assign(id=latest["record_id"].astype(str))[["id", "probability"]], on="id")
        if len(joined) >= MIN_LABELLED and joined["y"].nunique() == 2:
            out["logged"] = _scores(joined["y"].to_numpy(), joined["probability"].to_numpy(
                dtype=float), card.threshold)
        else:
            out["logged"] = {"rows": len(joined), "note": "too few logged predictions of "
                             "labelled records to score"}
    return out


def assess(month: str, settings: Settings | None = None, lake: Lake | None = None, *,
           records: pd.DataFrame | None = None, client: Any = None) -> dict[str, Any]:
    """Drift and decay of ``month`` against the champion (see the module docstring).

    ``records`` replaces the month's raw partition (raw records of the month, e.g. a batch
    received elsewhere, or a test's altered copy). Returns a JSON-able dict.
    """
    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    started = time.perf_counter()
    current = records.reset_index(drop=True) if records is not None \
        else month_records(lake, month)
    out: dict[str, Any] = {
        "month": month, "assessed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "current_rows": len(current),
        "thresholds": {"psi": settings.monitor_psi_threshold,
                       "p_value": settings.monitor_p_value,
                       "auc_drop": settings.monitor_auc_drop,
                       "ece_rise": settings.monitor_ece_rise},
        "champion": None, "drift": [], "decay": None, "notes": [],
    }
    if current.empty:
        raise MonitoringDataMissing(f"{month}: no records in the month")
    found = champion(settings, client)
    if found is None:
        out["notes"].append(f"{NO_CHAMPION}: nothing to compare the month with")
        out["seconds"] = round(time.perf_counter() - started, 3)
        return out
    card, model = found
    out["champion"] = {"version": card.version, "month": card.month,
                       "window_start": card.window_start, "window_end": card.window_end,
                       "threshold": card.threshold, "metrics": card.metrics}
    reference = reference_records(lake, card, settings)
    out["reference_rows"] = len(reference)
    ref_enriched, ref_inputs, ref_p = views(model, reference)
    cur_enriched, cur_inputs, cur_p = views(model, current)
    kw = {"psi_threshold": settings.monitor_psi_threshold, "alpha": settings.monitor_p_value}
    results = [*D.frame_drift(ref_enriched, cur_enriched, prefix=ENRICHED, **kw),
               *D.frame_drift(ref_inputs, cur_inputs, prefix=INPUT, **kw),
               D.column_drift(CHAMPION_SCORES, pd.Series(ref_p), pd.Series(cur_p),
                              kind=D.NUMERIC, **kw)]
    logged, note = logged_predictions(settings, month)
    out["notes"].append(note)
    out["logged_predictions"] = 0 if logged is None else len(logged)
    if logged is not None and "probability" in logged.columns:
        served = logged
        if "model_version" in logged.columns:
            served = logged[logged["model_version"].astype(str) == str(card.version)]
        served = distinct_records(served)
        if len(served) >= MIN_LOGGED:
            results.append(D.column_drift(
                LOGGED_SCORES, pd.Series(ref_p), pd.to_numeric(served["probability"],
                                                               errors="coerce"),
                kind=D.NUMERIC, **kw))
        else:
            out["notes"].append(f"{len(served)} distinct records among the logged predictions "
                                f"of champion v{card.version}: too few for prediction drift "
                                f"(fewer than {MIN_LOGGED})")
    for item in results:
        entry = item.as_dict()
        entry["seasonal"] = is_seasonal(item.feature)
        out["drift"].append(entry)
    y = R.labels(current)
    labelled = current[~np.isnan(y)].reset_index(drop=True)
    trained = None
    if card.window_start and card.window_end and not _in_dates(
            labelled, card.window_start, card.window_end).empty:
        trained = trained_ids(lake, card)
    else:
        trained = set()  # the month lies outside the window: the champion saw none of it
    out["decay"] = decay(card, labelled, cur_p[~np.isnan(y)], trained, logged)
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


# --------------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------------
def drifted(assessment: dict[str, Any]) -> list[dict[str, Any]]:
    """The drifted, non-calendar features, largest PSI first."""
    hits = [d for d in assessment.get("drift", []) if d.get("drifted") and not d.get("seasonal")]
    return sorted(hits, key=lambda d: -(d.get("psi") or 0.0))


def decide(assessment: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Retrain or not, and why (every reason that applies)."""
    settings = settings or get_settings()
    month = assessment["month"]
    reasons: list[str] = []
    if assessment.get("champion") is None:
        reasons.append(NO_CHAMPION)
    hits = drifted(assessment)
    if hits:
        shown = ", ".join(f"{d['feature']} (PSI {d['psi']:.3f})" for d in hits[:5])
        more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
        reasons.append(f"data drift in {len(hits)} feature(s): {shown}{more}")
    decay_ = assessment.get("decay") or {}
    drop, rise = decay_.get("auc_drop"), decay_.get("ece_rise")
    if drop is not None and drop >= settings.monitor_auc_drop:
        reasons.append(f"ROC AUC {decay_['monthly']['roc_auc']:.4f} is {drop:.4f} below the "
                       f"champion's {decay_['champion']['roc_auc']:.4f} "
                       f"(>= {settings.monitor_auc_drop:g})")
    if rise is not None and rise >= settings.monitor_ece_rise:
        reasons.append(f"ECE {decay_['monthly']['ece']:.4f} is {rise:.4f} above the "
                       f"champion's {decay_['champion']['ece']:.4f} "
                       f"(>= {settings.monitor_ece_rise:g})")
    action = RETRAIN if reasons else NO_ACTION
    reason = "; ".join(reasons) if reasons else "no action: no drift or decay past the thresholds"
    return {"month": month, "action": action, "retrain": action == RETRAIN, "reason": reason,
            "reasons": reasons}


# --------------------------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------------------------
def metric_name(feature: str) -> str:
    """``drift_psi/<feature>`` with the characters MLflow refuses replaced."""
    return "drift_psi/" + re.sub(r"[^A-Za-z0-9_\-./ ]", "_", feature)


def metrics(assessment: dict[str, Any], decision: dict[str, Any]) -> dict[str, float]:
    """The assessment's MLflow metrics (finite values only)."""
    out: dict[str, float] = {}
    for item in assessment.get("drift", []):
        if item.get("psi") is not None:
            out[metric_name(item["feature"])] = float(item["psi"])
    monthly = (assessment.get("decay") or {}).get("monthly") or {}
    for key in DECAY_METRICS:
        if monthly.get(key) is not None:
            out[f"monthly_{key}"] = float(monthly[key])
    logged = (assessment.get("decay") or {}).get("logged") or {}
    for key in DECAY_METRICS:
        if logged.get(key) is not None:
            out[f"logged_{key}"] = float(logged[key])
    out["drifted_features"] = float(len(drifted(assessment)))
    out["current_rows"] = float(assessment.get("current_rows") or 0)
    out["retrain_requested"] = 1.0 if decision.get("retrain") else 0.0
    if assessment.get("seconds") is not None:
        out["assess_seconds"] = float(assessment["seconds"])
    return out


def summary(assessment: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """What ``summary.json`` holds: the assessment (bins left to the report) and decision."""
    drift = [{k: v for k, v in d.items() if k != "bins"} for d in assessment.get("drift", [])]
    return {**assessment, "drift": drift, "decision": decision,
            "drifted_features": [d["feature"] for d in drifted(assessment)]}


def log_run(assessment: dict[str, Any], decision: dict[str, Any], html: str,
            settings: Settings, client: Any = None) -> str:
    """One MLflow run in ``MONITOR_EXPERIMENT``; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    client = client or registry.client_for(settings)
    month = assessment["month"]
    experiment = client.get_experiment_by_name(settings.monitor_experiment)
    experiment_id = experiment.experiment_id if experiment is not None \
        else client.create_experiment(settings.monitor_experiment)
    previous = client.search_runs(
        [experiment_id], filter_string=f"tags.month = '{month}' and tags.latest = 'true'")
    champ = assessment.get("champion") or {}
    run = client.create_run(experiment_id, run_name=f"monitor-{month}", tags={
        "month": month, "latest": "true", "kind": "monitoring", "action": decision["action"],
        "reason": decision["reason"][:5000],
        "champion_version": str(champ.get("version") or ""),
        "champion_month": str(champ.get("month") or "")})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(v)) for k, v in assessment["thresholds"].items()]
    params += [Param("month", month),
               Param("reference_rows", str(assessment.get("reference_rows", 0)))]
    values = [Metric(k, v, now, 0) for k, v in sorted(metrics(assessment, decision).items())]
    for start in range(0, len(values), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=values[start:start + 900],
                         params=params if start == 0 else [],
                         tags=[RunTag("decision", decision["action"])] if start == 0 else [])
    client.log_text(run_id, html, REPORT_FILE)
    client.log_dict(run_id, summary(assessment, decision), SUMMARY_FILE)
    client.set_terminated(run_id)
    for old in previous:
        client.set_tag(old.info.run_id, "latest", "false")
        client.set_tag(old.info.run_id, "superseded_by", run_id)
    return run_id


def write_lake(assessment: dict[str, Any], decision: dict[str, Any], html: str, lake: Lake,
               run_id: str | None, attempt: dict[str, Any] | None = None) -> dict[str, str]:
    """``3-monitoring/{month}/`` summary.json + report.html, then their manifest."""
    from chicago_crime.manifest import Publication, attempt_identity

    month = assessment["month"]
    prefix = layout.monitoring_prefix(month)
    pub = Publication(lake, prefix, "monitor", month, attempt or attempt_identity(),
                      sources={"mlflow_run": run_id or ""})
    pub.claim()
    keys = {"summary": prefix + SUMMARY_FILE, "report": prefix + REPORT_FILE}
    pub.put("summary", keys["summary"],
            lake.json_bytes({**summary(assessment, decision), "mlflow_run_id": run_id}),
            "application/json")
    pub.put("report", keys["report"], html.encode("utf-8"), "text/html; charset=utf-8")
    pub.publish()
    keys["manifest"] = pub.manifest_key
    return keys


def push_gauges(assessment: dict[str, Any], decision: dict[str, Any],
                settings: Settings) -> bool:
    """Push the assessment's gauges to the Pushgateway (job ``monitor_model``); False (and a
    warning) when it is not configured or does not answer."""
    if not settings.pushgateway_url:
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    reg = CollectorRegistry()
    psi = Gauge("chicago_crime_drift_psi", "PSI of a feature, month vs the champion's window",
                ["feature"], registry=reg)
    for item in assessment.get("drift", []):
        if item.get("psi") is not None:
            psi.labels(feature=item["feature"]).set(item["psi"])
    monthly = (assessment.get("decay") or {}).get("monthly") or {}
    for key, text in (("roc_auc", "ROC AUC"), ("brier", "Brier score"), ("ece", "ECE")):
        gauge = Gauge(f"chicago_crime_monthly_{key}", f"{text} of the champion on the month's "
                      "labelled records", registry=reg)
        gauge.set(monthly[key] if monthly.get(key) is not None else math.nan)
    Gauge("chicago_crime_monitor_last_run_timestamp_seconds", "When monitor_model last ran",
          registry=reg).set_to_current_time()
    Gauge("chicago_crime_retrain_requested", "1 when the last assessment requested retraining",
          registry=reg).set(1 if decision.get("retrain") else 0)
    try:
        push_to_gateway(settings.pushgateway_url, job="monitor_model", registry=reg, timeout=10)
    except Exception as exc:  # monitoring must not fail because the gateway is down
        log.warning("could not push to the Pushgateway at %s: %s", settings.pushgateway_url, exc)
        return False
    return True


def publish(assessment: dict[str, Any], decision: dict[str, Any],
            settings: Settings | None = None, lake: Lake | None = None, *,
            attempt: dict[str, Any] | None = None, client: Any = None) -> dict[str, Any]:
    """The report in MLflow and the lake, gauges in the Pushgateway; small values back."""
    from chicago_crime.monitoring.report import render

    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    html = render(assessment, decision)
    run_id = log_run(assessment, decision, html, settings, client)
    keys = write_lake(assessment, decision, html, lake, run_id, attempt)
    pushed = push_gauges(assessment, decision, settings)
    return {"month": assessment["month"], "run_id": run_id, "lake": keys, "pushed": pushed}


def run(month: str, settings: Settings | None = None, lake: Lake | None = None,
        ) -> dict[str, Any]:
    """Assess, decide and publish one month (the CLI and the benchmark; the DAG runs the same
    three steps as tasks)."""
    settings = settings or get_settings()
    lake = lake or Lake(settings=settings)
    assessment = assess(month, settings, lake)
    decision = decide(assessment, settings)
    return {**publish(assessment, decision, settings, lake), "decision": decision}
