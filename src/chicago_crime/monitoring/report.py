"""The monitoring report: one self-contained HTML page (no script, no CDN: it opens from
MLflow's artifact view and from the lake, offline)."""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f3f3f3}td.l{text-align:left}
tr.drift td{background:#fde2e1}tr.seasonal td{color:#888}
.retrain{color:#b00020;font-weight:bold}.none{color:#1b7f3b;font-weight:bold}
.bar{display:inline-block;height:9px}.ref{background:#8aa9d6}.cur{background:#e08a5c}
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return escape(str(value))


def _bars(bins: list[list[Any]]) -> str:
    """Reference vs current share per bin, as CSS bars."""
    rows = []
    for label, ref, cur in bins:
        if not ref and not cur:
            continue
        rows.append(
            f"<tr><td class=l>{escape(str(label))}</td>"
            f"<td>{ref:.3f} <span class='bar ref' style='width:{ref * 200:.0f}px'></span></td>"
            f"<td>{cur:.3f} <span class='bar cur' style='width:{cur * 200:.0f}px'></span></td>"
            "</tr>")
    return ("<table><tr><th>bin</th><th>reference share</th><th>current share</th></tr>"
            + "".join(rows) + "</table>")


def render(assessment: dict[str, Any], decision: dict[str, Any]) -> str:
    """The HTML report of one assessment and its decision."""
    month = escape(assessment["month"])
    champ = assessment.get("champion")
    action = decision["action"]
    parts = [f"<!doctype html><html><head><meta charset=utf-8>"
             f"<title>monitor_model {month}</title><style>{_CSS}</style></head><body>",
             f"<h1>Monitoring of {month}</h1>",
             f"<p>Decision: <span class={escape(action)}>"
             f"{'retrain' if action == 'retrain' else 'no action'}</span> — "
             f"{escape(decision['reason'].removeprefix('no action: '))}</p>"]
    if champ:
        parts.append(
            f"<p>Champion v{escape(str(champ['version']))}, trained on "
            f"{escape(str(champ.get('month')))} (records {escape(str(champ.get('window_start')))}"
            f" to {escape(str(champ.get('window_end')))}); reference sample "
            f"{assessment.get('reference_rows', 0):,} records, month "
            f"{assessment.get('current_rows', 0):,} records. Assessed "
            f"{escape(assessment.get('assessed_at', ''))} in {assessment.get('seconds', 0)} s."
            "</p>")
    th = assessment["thresholds"]
    parts.append(f"<p>Thresholds: PSI ≥ {th['psi']:g} and p &lt; {th['p_value']:g}; ROC AUC "
                 f"drop ≥ {th['auc_drop']:g}; ECE rise ≥ {th['ece_rise']:g}. Calendar "
                 "features (month, season) are shown grey and never count as drift.</p>")
    for note in assessment.get("notes", []):
        parts.append(f"<p><i>{escape(str(note))}</i></p>")
    decay = assessment.get("decay")
    if decay:
        parts.append("<h2>Performance on the month's labelled records</h2>")
        if decay.get("note"):
            parts.append(f"<p><i>{escape(decay['note'])}</i></p>")
        parts.append(f"<p>{decay.get('labelled_rows', 0):,} labelled records; "
                     f"{decay.get('excluded_trained_rows', 0):,} left out because the champion "
                     f"trained on them; {decay.get('unseen_rows', 0):,} scored.</p>")
        rows = [("champion's test split", decay.get("champion") or {}),
                ("this month (champion)", decay.get("monthly") or {}),
                ("this month (logged predictions)", decay.get("logged") or {})]
        parts.append("<table><tr><th>records</th><th>ROC AUC</th><th>Brier</th><th>ECE</th>"
                     "<th>rows</th></tr>")
        for label, m in rows:
            parts.append(f"<tr><td class=l>{label}</td><td>{_num(m.get('roc_auc'))}</td>"
                         f"<td>{_num(m.get('brier'))}</td><td>{_num(m.get('ece'))}</td>"
                         f"<td>{_num(m.get('rows'))}</td></tr>")
        parts.append("</table>")
    drift = assessment.get("drift") or []
    if drift:
        parts.append("<h2>Drift per feature</h2><table><tr><th>feature</th><th>kind</th>"
                     "<th>PSI</th><th>test</th><th>statistic</th><th>p-value</th>"
                     "<th>drifted</th></tr>")
        for d in sorted(drift, key=lambda d: -(d.get("psi") or 0.0)):
            cls = "seasonal" if d.get("seasonal") else "drift" if d.get("drifted") else ""
            parts.append(
                f"<tr class='{cls}'><td class=l>{escape(d['feature'])}</td><td>{d['kind']}</td>"
                f"<td>{_num(d.get('psi'))}</td><td>{d['test']}</td>"
                f"<td>{_num(d.get('statistic'))}</td><td>{_num(d.get('p_value'), 3)}</td>"
                f"<td>{'yes' if d.get('drifted') else ''}</td></tr>")
        parts.append("</table><h2>Distributions (largest PSI first)</h2>")
        for d in sorted(drift, key=lambda d: -(d.get("psi") or 0.0))[:12]:
            if d.get("bins"):
                parts.append(f"<h3>{escape(d['feature'])} — PSI {_num(d.get('psi'))}</h3>"
                             + _bars(d["bins"]))
    parts.append("</body></html>")
    return "\n".join(parts)
