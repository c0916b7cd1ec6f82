"""A Socrata-compatible replay server over a folder of Chicago Data Portal CSV exports.

It serves ``crimes/YYYY-MM.csv.gz`` and ``police_stations.csv`` (laid out like
``../shared/data/chicago``) as the SODA 2.x JSON the live API returns for the datasets
``ijzp-q8t2`` (crimes) and ``z8bn-74gv`` (police stations): snake_case fields, numbers as
strings, booleans as JSON booleans, floating timestamps, missing values omitted and
``location`` as a SODA location object. It supports what the ingestion client sends:
``$where`` (comparisons and ``between`` joined by ``AND``), ``$order``, ``$limit``,
``$offset``; ``$$app_token`` / ``X-App-Token`` are accepted. Months are loaded on first use.

Fault injection (tests, demos): ``inject(status=500, times=2)``, ``inject(delay=2.0)`` or
``POST /_faults`` with ``{"status": 500, "times": 2, "delay": 0, "dataset": null}``;
``DELETE /_faults`` clears them; ``GET /_stats`` returns request counters.

In process::

    with ReplayServer("../shared/data/chicago") as server:
        settings = load_settings(socrata_base_url=server.url)

CLI: ``python -m chicago_crime.devtools.replay --data DIR --host 127.0.0.1 --port 8765``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pandas as pd

from chicago_crime.layout import month_bounds
from chicago_crime.portal import STATION_FIELDS, crimes_export_path, read_export, to_soda_json
from chicago_crime.record import BOOLEAN_FIELDS, CRIME_FIELDS, TIMESTAMP_FIELDS

log = logging.getLogger(__name__)

CRIMES_DATASET = "ijzp-q8t2"
STATIONS_DATASET = "z8bn-74gv"
DEFAULT_LIMIT = 1000  # SODA 2.x default page size
# Columns the portal types as numbers (they sort numerically); others are text.
NUMERIC_FIELDS = frozenset({"id", "ward", "x_coordinate", "y_coordinate", "year", "latitude",
                            "longitude"})
HUMAN_ADDRESS = '{"address": "", "city": "", "state": "", "zip": ""}'
_MONTH_FILE = re.compile(r"^(\d{4}-\d{2})\.csv\.gz$")
_FIELD = r"(:?[a-z_][a-z0-9_]*)"
_LITERAL = r"('(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false)"
_BETWEEN = re.compile(rf"^{_FIELD}\s+between\s+{_LITERAL}\s+and\s+{_LITERAL}$", re.I)
_COMPARE = re.compile(rf"^{_FIELD}\s*(>=|<=|!=|<>|=|>|<)\s*{_LITERAL}$", re.I)
_AND = re.compile(r"\s+and\s+", re.I)


class QueryError(ValueError):
    """A SoQL query the replay server cannot answer (HTTP 400)."""


@dataclass(frozen=True)
class Predicate:
    field: str
    op: str
    value: str
    quoted: bool


@dataclass
class Fault:
    """Answer the next ``times`` requests (None = all) with ``status`` after ``delay`` s."""

    status: int | None = 500
    times: int | None = 1
    delay: float = 0.0
    dataset: str | None = None


# -- SoQL subset ------------------------------------------------------------------------------
def _literal(token: str) -> tuple[str, bool]:
    if token.startswith("'"):
        return token[1:-1].replace("''", "'"), True
    return token, False


def _split_and(where: str) -> list[str]:
    """Split on AND outside quotes, keeping ``x between a and b`` together."""
    parts: list[str] = []
    masked = re.sub(r"'(?:[^']|'')*'", lambda m: "\0" * len(m.group()), where)
    start = 0
    pending_between = False
    for match in _AND.finditer(masked):
        chunk = masked[start:match.start()]
        if re.search(r"\sbetween\s", chunk, re.I) and not pending_between:
            pending_between = True  # this AND belongs to BETWEEN
            continue
        parts.append(where[start:match.start()])
        start = match.end()
        pending_between = False
    parts.append(where[start:])
    return [p.strip() for p in parts]


def parse_where(where: str | None) -> list[Predicate]:
    """Parse the subset of SoQL ``$where`` the ingestion client uses."""
    if not where or not where.strip():
        return []
    text = where.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    preds: list[Predicate] = []
    for clause in _split_and(text):
        clause = clause.strip()
        while clause.startswith("(") and clause.endswith(")"):
            clause = clause[1:-1].strip()
        if m := _BETWEEN.match(clause):
            field = m.group(1).lower()
            low, q1 = _literal(m.group(2))
            high, q2 = _literal(m.group(3))
            preds += [Predicate(field, ">=", low, q1), Predicate(field, "<=", high, q2)]
        elif m := _COMPARE.match(clause):
            value, quoted = _literal(m.group(3))
            op = "!=" if m.group(2) == "<>" else m.group(2)
            preds.append(Predicate(m.group(1).lower(), op, value, quoted))
        else:
            raise QueryError(f"unsupported $where clause: {clause!r}")
    return preds


def parse_order(order: str | None) -> list[tuple[str, bool]]:
    """``'date DESC, id'`` -> ``[('date', False), ('id', True)]`` (field, ascending)."""
    if not order or not order.strip():
        return []
    out = []
    for item in order.split(","):
        words = item.split()
        if not words or len(words) > 2 or not re.fullmatch(_FIELD, words[0], re.I):
            raise QueryError(f"unsupported $order item: {item.strip()!r}")
        direction = words[1].upper() if len(words) == 2 else "ASC"
        if direction not in {"ASC", "DESC"}:
            raise QueryError(f"unsupported $order direction: {words[1]!r}")
        out.append((words[0].lower(), direction == "ASC"))
    return out


def _column_key(df: pd.DataFrame, field: str) -> pd.Series:
    """Comparable values of a column (timestamps, numbers or text)."""
    if field == ":id":
        return df["_rowid"]
    if field not in df.columns or field.startswith("_"):
        raise QueryError(f"no such column: {field}")
    if field in TIMESTAMP_FIELDS:
        return pd.to_datetime(df[field], format="ISO8601")
    if field in NUMERIC_FIELDS:
        return pd.to_numeric(df[field], errors="coerce")
    if field in BOOLEAN_FIELDS:
        return df[field].astype("boolean")
    return df[field]


def _typed_value(field: str, pred: Predicate) -> Any:
    try:
        if field in TIMESTAMP_FIELDS:
            return pd.Timestamp(pred.value)
        if field in NUMERIC_FIELDS or field == ":id":
            return float(pred.value)
        if field in BOOLEAN_FIELDS:
            return pred.value.lower() == "true"
    except ValueError as exc:
        raise QueryError(f"cannot compare {field} with {pred.value!r}") from exc
    return pred.value


def apply_where(df: pd.DataFrame, preds: list[Predicate]) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for pred in preds:
        col = _column_key(df, pred.field)
        value = _typed_value(pred.field, pred)
        cmp = {
            ">=": col >= value, ">": col > value, "<=": col <= value, "<": col < value,
            "=": col == value, "!=": col != value,
        }[pred.op]
        mask &= cmp.fillna(False).astype(bool)
    return df[mask]


def apply_order(df: pd.DataFrame, order: list[tuple[str, bool]]) -> pd.DataFrame:
    if not order:
        order = [(":id", True)]
    keys = pd.DataFrame({f"k{i}": _column_key(df, f) for i, (f, _) in enumerate(order)},
                        index=df.index)
    keys["_rowid"] = df["_rowid"]  # ties broken by row id: stable paging
    ranked = keys.sort_values(list(keys.columns),
                              ascending=[a for _, a in order] + [True], kind="mergesort")
    return df.loc[ranked.index]


def date_range(preds: list[Predicate]) -> tuple[pd.Timestamp | None, pd.Timestamp | None, bool]:
    """Bounds the ``date`` predicates put on the result: (low, high, high_inclusive)."""
    low = high = None
    inclusive = True
    for p in preds:
        if p.field != "date":
            continue
        value = pd.Timestamp(p.value)
        if p.op in {">=", ">", "="}:
            low = value if low is None else max(low, value)
        if p.op in {"<=", "<", "="} and (high is None or value <= high):
            inclusive = p.op != "<" and (high is None or value < high or inclusive)
            high = value
    return low, high, inclusive


# -- data -------------------------------------------------------------------------------------
class ReplayData:
    """Lazily loaded, cached datasets of one export folder."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        if not (self.data_dir / "crimes").is_dir():
            raise FileNotFoundError(f"{self.data_dir}/crimes not found (portal exports folder)")
        self._months: dict[str, pd.DataFrame] = {}
        self._stations: pd.DataFrame | None = None
        self._lock = threading.Lock()

    def months(self) -> list[str]:
        return sorted(m.group(1) for p in (self.data_dir / "crimes").iterdir()
                      if (m := _MONTH_FILE.match(p.name)))

    @staticmethod
    def _location(df: pd.DataFrame) -> pd.Series:
        return pd.Series(
            [None if pd.isna(lat) or pd.isna(lon)
             else {"latitude": lat, "longitude": lon, "human_address": HUMAN_ADDRESS}
             for lat, lon in zip(df["latitude"], df["longitude"], strict=True)],
            index=df.index, dtype=object,
        )

    def _load_month(self, month: str, position: int) -> pd.DataFrame:
        df = read_export(crimes_export_path(self.data_dir, month))
        df["location"] = self._location(df)
        df = df[[c for c in CRIME_FIELDS if c in df.columns]].copy()
        df["_rowid"] = range(position * 10_000_000, position * 10_000_000 + len(df))
        log.info("replay: loaded %s (%d rows)", month, len(df))
        return df

    def crimes_month(self, month: str) -> pd.DataFrame:
        with self._lock:
            if month not in self._months:
                self._months[month] = self._load_month(month, self.months().index(month))
            return self._months[month]

    def crimes(self, preds: list[Predicate]) -> pd.DataFrame:
        low, high, inclusive = date_range(preds)
        frames = []
        for month in self.months():
            start, end = month_bounds(month)
            if (low is None or low < end) and (
                    high is None or high > start or (inclusive and high == start)):
                frames.append(self.crimes_month(month))
        if not frames:
            return pd.DataFrame(columns=[*CRIME_FIELDS, "_rowid"])
        return pd.concat(frames, ignore_index=True)

    def stations(self) -> pd.DataFrame:
        with self._lock:
            if self._stations is None:
                df = read_export(self.data_dir / "police_stations.csv")
                df["location"] = self._location(df)
                df = df[[c for c in STATION_FIELDS if c in df.columns]].copy()
                df["_rowid"] = range(len(df))
                self._stations = df
            return self._stations

    def query(self, dataset: str, params: dict[str, str]) -> pd.DataFrame:
        unsupported = sorted(k for k in params if k.startswith("$") and k not in
                             {"$where", "$order", "$limit", "$offset", "$$app_token",
                              "$$exclude_system_fields"})
        if unsupported:
            raise QueryError(f"parameters not supported by the replay server: {unsupported}")
        preds = parse_where(params.get("$where"))
        order = parse_order(params.get("$order"))
        try:
            limit = int(params.get("$limit", DEFAULT_LIMIT))
            offset = int(params.get("$offset", 0))
        except ValueError as exc:
            raise QueryError("$limit and $offset must be integers") from exc
        if limit < 0 or offset < 0:
            raise QueryError("$limit and $offset must be >= 0")
        df = self.crimes(preds) if dataset == CRIMES_DATASET else self.stations()
        df = apply_order(apply_where(df, preds), order)
        return df.iloc[offset:offset + limit]


# -- HTTP -------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("replay %s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        # the client may have given up already (timeout tests)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type};charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"code": code, "error": True, "message": message}).encode()
        self._send(status, body)

    def do_GET(self) -> None:
        replay = self.server.replay
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/_stats":
            return self._send(200, json.dumps(replay.stats).encode())
        if url.path == "/_health":
            return self._send(200, b'{"status": "ok"}')
        m = re.fullmatch(r"/resource/([a-z0-9]{4}-[a-z0-9]{4})\.json", url.path)
        if not m:
            return self._error(404, "not_found", f"no route {url.path}")
        dataset = m.group(1)
        token = params.get("$$app_token") or self.headers.get("X-App-Token")
        replay._count(dataset, bool(token))
        fault = replay._take_fault(dataset)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status:
                return self._error(fault.status, "injected_fault",
                                   f"injected fault {fault.status}")
        if dataset not in {CRIMES_DATASET, STATIONS_DATASET}:
            return self._error(404, "not_found", f"dataset {dataset} not found")
        try:
            rows = replay.data.query(dataset, params)
        except QueryError as exc:
            return self._error(400, "query.compiler.malformed", str(exc))
        self._send(200, to_soda_json(rows))

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/_faults":
            return self._error(404, "not_found", self.path)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            spec = json.loads(self.rfile.read(length) or b"{}")
            fault = self.server.replay.inject(**spec)
        except (TypeError, ValueError) as exc:
            return self._error(400, "bad_fault", str(exc))
        self._send(200, json.dumps(asdict(fault)).encode())

    def do_DELETE(self) -> None:
        if urlsplit(self.path).path != "/_faults":
            return self._error(404, "not_found", self.path)
        self.server.replay.clear_faults()
        self._send(200, b"{}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    replay: ReplayServer


class ReplayServer:
    """The replay server; ``start()`` serves in a background thread, ``serve()`` blocks."""

    def __init__(self, data_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data = ReplayData(data_dir)
        self.host = host
        self.port = port
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def _bind(self) -> _HTTPServer:
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.replay = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        return httpd

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ReplayServer:
        httpd = self._bind()
        self._thread = threading.Thread(target=httpd.serve_forever, name="replay",
                                        daemon=True)
        self._thread.start()
        log.info("replay server on %s serving %s", self.url, self.data.data_dir)
        return self

    def serve(self) -> None:
        self._bind().serve_forever()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and counters ------------------------------------------------------------------
    def inject(self, status: int | None = 500, times: int | None = 1, delay: float = 0.0,
               dataset: str | None = None) -> Fault:
        """Queue a fault: ``times`` requests (None = every request) get ``status``/``delay``."""
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError("status must be an HTTP error status (400-599) or null")
        if times is not None and int(times) < 1:
            raise ValueError("times must be >= 1 or null (always)")
        fault = Fault(None if status is None else int(status),
                      None if times is None else int(times), float(delay), dataset)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, dataset: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.dataset not in (None, dataset):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                self._counts["faults"] += 1
                return fault
        return None

    def _count(self, dataset: str, token: bool) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts[f"requests:{dataset}"] += 1
            self._counts["with_app_token"] += int(token)

    @property
    def stats(self) -> dict[str, int]:
        """``requests``, ``requests:<dataset>``, ``faults`` served, ``with_app_token``."""
        with self._lock:
            return {"requests": 0, "faults": 0, "with_app_token": 0, **self._counts}

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with crimes/YYYY-MM.csv.gz")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ReplayServer(args.data, args.host, args.port)
    httpd = server._bind()
    months = server.data.months()
    print(f"replay server on {server.url} ({len(months)} months "
          f"{months[0] if months else '-'}..{months[-1] if months else '-'}); "
          f"set SOCRATA_BASE_URL={server.url}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
