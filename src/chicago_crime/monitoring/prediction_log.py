"""The prediction log: every prediction the API serves, in PostgreSQL (``PG_MONITORING_DB``).

One row per scored record: the request id, when it was served, the model version, the model's
input fields (``record``, JSONB, the :data:`record.MODEL_FIELDS`), the probability, the decision
and its threshold, and the request's latency. ``record_id`` is the record's portal ``id`` when
the request carries it, so a later label (the portal's ``arrest``) can be joined to the
prediction. The monitoring jobs read it back with :func:`read_predictions`.

Writing stays off the request path: a route hands the served predictions to
:meth:`PredictionLog.submit` (a lock and a list append), and a writer thread sends them in
batches with PostgreSQL ``COPY``, at the latest every ``PREDICTION_LOG_FLUSH_SECONDS``. The queue
is bounded (``PREDICTION_LOG_QUEUE_SIZE`` rows): when it is full, new predictions are dropped,
counted and logged, never waited for. While PostgreSQL is down the writer keeps the batch in
hand and retries with a growing delay; the API keeps serving. A clean shutdown writes what is
queued, for at most ``PREDICTION_LOG_SHUTDOWN_SECONDS``. Rows older than
``PREDICTION_LOG_RETENTION_DAYS`` are deleted hourly.

The writer signs in as ``PG_MONITORING_USER``, a login that reaches the monitoring database
alone; the table is created (idempotently) by the writer at start, and the platform's role
reads it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from chicago_crime import record as R

if TYPE_CHECKING:
    import pandas as pd

    from chicago_crime.config import Settings

log = logging.getLogger(__name__)

metadata = sa.MetaData()
#: One row per scored record.
TABLE = sa.Table(
    "prediction_log", metadata,
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("item", sa.Integer, nullable=False,
              comment="position of the record in its request (0 for POST /predict)"),
    sa.Column("record_id", sa.Text, comment="the record's portal id, when the request had one"),
    sa.Column("logged_at", sa.TIMESTAMP(timezone=True), nullable=False,
              comment="when the prediction was served"),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("record", postgresql.JSONB, nullable=False,
              comment="the model's input fields (record.MODEL_FIELDS) as validated"),
    sa.Column("probability", sa.Double, nullable=False),
    sa.Column("decision", sa.Boolean, nullable=False, comment="arrest predicted"),
    sa.Column("threshold", sa.Double, nullable=False),
    sa.Column("latency_ms", sa.Double, nullable=False,
              comment="server time from the request's arrival to its predictions"),
    sa.Index("prediction_log_logged_at", "logged_at"),
    sa.Index("prediction_log_record_id", "record_id"),
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in TABLE.columns)
#: What :func:`read_predictions` returns besides the record's fields, in this order.
READ_COLUMNS: tuple[str, ...] = (
    "request_id", "item", "record_id", "logged_at", "model_version", "probability", "decision",
    "threshold", "latency_ms",
)
#: Serialises table creation and retention between the API's worker processes.
_ADVISORY_LOCK = 0x7072_6564_6C6F_67  # "predlog"
RETENTION_EVERY_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 30.0
#: Rows converted between two yields of the GIL (the event loop waits at most one chunk).
CHUNK_ROWS = 200


def ddl() -> list[str]:
    """``CREATE TABLE/INDEX IF NOT EXISTS`` statements of :data:`TABLE` (PostgreSQL)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statements = [str(CreateTable(TABLE, if_not_exists=True).compile(dialect=dialect))]
    statements += [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
                   for index in sorted(TABLE.indexes, key=lambda i: str(i.name))]
    return statements


# -- what a route hands over ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Served:
    """One request's predictions, queued as they are; rows are built in the writer thread."""

    request_id: str
    logged_at: datetime
    model_version: str
    threshold: float
    latency_ms: float
    #: each record's validated field values (the model reads the :data:`record.MODEL_FIELDS`)
    records: Sequence[Mapping[str, Any]]
    record_ids: Sequence[str | None]
    probabilities: Sequence[float]
    decisions: Sequence[bool]

    def __len__(self) -> int:
        return len(self.records)


def record_json(values: Mapping[str, Any]) -> str:
    """The model's input fields of one record as JSON (timestamps ISO 8601, NaN as null).

    ``pydantic_core.to_json`` (already the API's serialiser) writes timestamps as
    ``datetime.isoformat`` does and non-finite floats as null; it costs about a third of the
    standard library's encoder with a ``default`` hook (1,000 served records: 2.0 vs 6.6 ms,
    best of 15), which is CPU the writer thread no longer takes from the requests."""
    return to_json({name: values.get(name) for name in R.MODEL_FIELDS},
                   inf_nan_mode="null").decode()


def rows(served: Served) -> Iterator[tuple[Any, ...]]:
    """The table rows of one request, in :data:`COLUMNS` order."""
    for i, values in enumerate(served.records):
        yield (served.request_id, i, served.record_ids[i], served.logged_at,
               served.model_version, record_json(values), float(served.probabilities[i]),
               bool(served.decisions[i]), served.threshold, served.latency_ms)


# -- where rows go -------------------------------------------------------------------------------
class SinkUnavailable(RuntimeError):
    """The database cannot be reached now: keep the rows and retry later."""


class Sink(Protocol):
    def open(self) -> None: ...
    def write(self, batch: Sequence[Served]) -> int: ...
    def expire(self, days: int) -> int: ...
    def close(self) -> None: ...


class PostgresSink:
    """Writes batches into :data:`TABLE` with ``COPY`` over one psycopg connection (opened on
    first use, and again after a failure, creating the table if needed)."""

    def __init__(self, conninfo: Mapping[str, Any]) -> None:
        self._conninfo = dict(conninfo)
        self._conn: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSink:
        password = settings.pg_monitoring_password
        return cls({
            "host": settings.pg_host, "port": settings.pg_port,
            "dbname": settings.pg_monitoring_db, "user": settings.pg_monitoring_user,
            "password": password.get_secret_value() if password else "",
            "connect_timeout": 5, "application_name": "chicago-crime prediction log",
        })

    def _connection(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        try:
            conn = psycopg.connect(**self._conninfo)
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(_first_line(exc)) from exc
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                for statement in ddl():
                    cur.execute(statement)
        except psycopg.Error:
            conn.close()
            raise
        self._conn = conn
        return conn

    def open(self) -> None:
        """Connect and create the table if needed (:class:`SinkUnavailable` when down)."""
        self._connection()

    def _run(self, work: Callable[[Any], int]) -> int:
        import psycopg

        conn = self._connection()
        try:
            with conn.transaction():
                return work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise SinkUnavailable(_first_line(exc)) from exc
        except psycopg.Error:
            self.close()  # e.g. the table was dropped: the next connection recreates it
            raise

    def write(self, batch: Sequence[Served]) -> int:
        columns = ", ".join(COLUMNS)

        def copy(conn: Any) -> int:
            count = 0
            with conn.cursor() as cur, cur.copy(
                    f"COPY {TABLE.name} ({columns}) FROM STDIN") as out:
                for served in batch:
                    for row in rows(served):
                        out.write_row(row)
                        count += 1
                        if count % CHUNK_ROWS == 0:
                            time.sleep(0)  # let the event loop's thread take the GIL
            return count

        return self._run(copy)

    def expire(self, days: int) -> int:
        def delete(conn: Any) -> int:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                cur.execute(f"DELETE FROM {TABLE.name} "
                            "WHERE logged_at < now() - make_interval(days => %s)", (days,))
                return int(cur.rowcount)

        return self._run(delete)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- the writer ----------------------------------------------------------------------------------
class Observer(Protocol):
    """Where the writer reports what happened (the server's Prometheus metrics)."""

    def log_written(self, rows: int) -> None: ...
    def log_dropped(self, reason: str, rows: int) -> None: ...
    def log_write_failed(self) -> None: ...
    def log_database_up(self, up: bool) -> None: ...


class _Quiet:
    def log_written(self, rows: int) -> None:
        pass

    def log_dropped(self, reason: str, rows: int) -> None:
        pass

    def log_write_failed(self) -> None:
        pass

    def log_database_up(self, up: bool) -> None:
        pass


#: Why rows were not logged (the ``reason`` label of the dropped counter).
QUEUE_FULL, REJECTED, SHUTDOWN = "queue_full", "rejected", "shutdown"


class PredictionLog:
    """Queue + writer thread. ``submit`` never blocks; ``close`` flushes within a bound."""

    def __init__(self, sink: Sink, *, queue_size: int = 100_000, batch_size: int = 1_000,
                 flush_seconds: float = 1.0, shutdown_seconds: float = 10.0,
                 retention_days: int = 0, observer: Observer | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.shutdown_seconds = shutdown_seconds
        self.retention_days = retention_days
        self.observer: Observer = observer or _Quiet()
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = threading.Lock()
        self._queue: deque[Served] = deque()
        self._queued_rows = 0
        self._wake = threading.Event()      # a batch is ready, or close() was called
        self._stopping = threading.Event()  # close() was called (cuts a retry delay short)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None
        self.database_up: bool | None = None
        #: rows written / dropped by reason, failed write attempts (also sent to the observer)
        self.written = 0
        self.dropped: dict[str, int] = {QUEUE_FULL: 0, REJECTED: 0, SHUTDOWN: 0}
        self.failed_writes = 0
        self._last_drop_warning = -math.inf
        self._drops_unreported = 0

    @classmethod
    def from_settings(cls, settings: Settings, observer: Observer | None = None,
                      sink: Sink | None = None) -> PredictionLog | None:
        """The configured log, or None when it is off (``PREDICTION_LOG_ENABLED=false``, or no
        ``PG_MONITORING_PASSWORD``: said once in the log)."""
        if not settings.prediction_log_enabled:
            return None
        password = settings.pg_monitoring_password
        if sink is None and (password is None or not password.get_secret_value()):
            log.warning("prediction log off: PG_MONITORING_PASSWORD is not set (set it, or "
                        "PREDICTION_LOG_ENABLED=false to silence this)")
            return None
        return cls(sink or PostgresSink.from_settings(settings),
                   queue_size=settings.prediction_log_queue_size,
                   batch_size=settings.prediction_log_batch_size,
                   flush_seconds=settings.prediction_log_flush_seconds,
                   shutdown_seconds=settings.prediction_log_shutdown_seconds,
                   retention_days=settings.prediction_log_retention_days, observer=observer)

    # -- the request path ------------------------------------------------------------------------
    def submit(self, served: Served) -> bool:
        """Queue one request's predictions; False (counted, logged) when the queue is full or
        the log is closed. Never blocks on the database."""
        n = len(served)
        with self._lock:
            accepted = not self._closing and self._queued_rows + n <= self.queue_size
            if accepted:
                self._queue.append(served)
                self._queued_rows += n
                full_batch = self._queued_rows >= self.batch_size
        if not accepted:
            self._drop(QUEUE_FULL if not self._closing else SHUTDOWN, n)
            return False
        if full_batch:
            self._wake.set()
        return True

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log",
                                            daemon=True)
            self._thread.start()

    def close(self) -> bool:
        """Write what is queued (for at most ``shutdown_seconds``) and stop the writer. Rows
        still queued then are counted as dropped and logged. True when nothing was lost."""
        with self._lock:
            self._closing = True
            self._deadline = self._clock() + self.shutdown_seconds
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.shutdown_seconds + 5.0)
            if self._thread.is_alive():  # pragma: no cover - a write hung past its timeout
                log.error("prediction log: the writer did not stop within %.0f s",
                          self.shutdown_seconds + 5.0)
        else:
            self._run()  # never started: flush here, within the same bound
        lost = self._discard_queue()
        self.sink.close()
        if lost:
            log.error("prediction log: %d prediction(s) not written at shutdown (PostgreSQL "
                      "unreachable for %.0f s)", lost, self.shutdown_seconds)
        return lost == 0

    # -- the writer thread -----------------------------------------------------------------------
    def _take(self) -> list[Served]:
        """Up to ``batch_size`` rows (whole requests; one request may exceed it)."""
        batch: list[Served] = []
        rows_taken = 0
        with self._lock:
            while self._queue and (not batch or rows_taken + len(self._queue[0])
                                   <= self.batch_size):
                served = self._queue.popleft()
                batch.append(served)
                rows_taken += len(served)
            self._queued_rows -= rows_taken
        return batch

    def _run(self) -> None:
        backoff = 0.0
        opened = False
        next_retention = self._clock()  # at start, then hourly
        batch: list[Served] = []
        while True:
            if not batch:
                batch = self._take()
            closing = self._closing
            if closing and (not batch or self._clock() >= self._deadline_or_now()):
                self._putback(batch)  # close() counts what is left
                return
            try:
                if not opened:  # the table exists from the start (readers find it)
                    self.sink.open()
                    opened = True
                if batch:
                    self._write(batch)
                    batch = []
                if self.retention_days and not closing and self._clock() >= next_retention:
                    self._expire()
                    next_retention = self._clock() + RETENTION_EVERY_SECONDS
                self._set_up(True)
                backoff = 0.0
            except SinkUnavailable as exc:
                self._failed()
                if self.database_up is not False:
                    log.warning("prediction log: PostgreSQL unreachable (%s); %d row(s) queued, "
                                "retrying (the API keeps serving)", exc, self._pending(batch))
                self._set_up(False)
                backoff = min(MAX_BACKOFF_SECONDS, max(0.5, backoff * 2))
                self._backoff(backoff)
                continue
            except Exception:
                self._failed()
                lost = sum(len(s) for s in batch)
                log.exception("prediction log: PostgreSQL refused a batch of %d row(s) "
                              "(dropped)", lost)
                if lost:
                    self._drop(REJECTED, lost)
                batch = []
                self._backoff(1.0)
                continue
            if closing or self._queued_rows >= self.batch_size:
                continue
            self._wake.wait(self.flush_seconds)
            self._wake.clear()

    def _deadline_or_now(self) -> float:
        return self._deadline if self._deadline is not None else self._clock()

    def _backoff(self, seconds: float) -> None:
        """Wait before retrying; ``close`` cuts it short (its flush starts at once), and while
        closing, retries are spaced the same way until the deadline."""
        if self._closing:
            time.sleep(max(0.0, min(seconds, self._deadline_or_now() - self._clock())))
        else:
            self._stopping.wait(seconds)

    def _failed(self) -> None:
        self.failed_writes += 1
        self.observer.log_write_failed()

    def _write(self, batch: list[Served]) -> None:
        count = self.sink.write(batch)
        self.written += count
        self.observer.log_written(count)

    def _expire(self) -> None:
        deleted = self.sink.expire(self.retention_days)
        if deleted:
            log.info("prediction log: deleted %d row(s) older than %d days", deleted,
                     self.retention_days)

    def _set_up(self, up: bool) -> None:
        if up and self.database_up is False:
            log.warning("prediction log: PostgreSQL reachable again; writing the %d queued "
                        "row(s)", self._queued_rows)
        if up != self.database_up:
            self.database_up = up
            self.observer.log_database_up(up)

    def _pending(self, batch: list[Served]) -> int:
        return self._queued_rows + sum(len(s) for s in batch)

    def _putback(self, batch: list[Served]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(batch))
            self._queued_rows += sum(len(s) for s in batch)

    def _discard_queue(self) -> int:
        with self._lock:
            lost = self._queued_rows
            self._queue.clear()
            self._queued_rows = 0
        if lost:
            self._drop(SHUTDOWN, lost)
        return lost

    def _drop(self, reason: str, n: int) -> None:
        with self._counts:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            self._drops_unreported += n if reason == QUEUE_FULL else 0
            now = self._clock()
            warn = reason == QUEUE_FULL and now - self._last_drop_warning >= 60
            if warn:
                self._last_drop_warning = now
                unreported, self._drops_unreported = self._drops_unreported, 0
        self.observer.log_dropped(reason, n)
        if warn:  # one line a minute at most
            log.warning("prediction log: queue full (%d rows): %d prediction(s) dropped since "
                        "the last warning (PostgreSQL slow or down?)", self.queue_size,
                        unreported)


# -- reading it back -----------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def read_predictions(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Predictions served in ``[start, end)`` (naive datetimes are UTC), oldest first.

    Columns: :data:`READ_COLUMNS` (``logged_at`` in UTC), then one per
    :data:`record.MODEL_FIELDS` entry as the model read it: ``date`` a datetime (Chicago local
    time), numbers as floats (NaN when missing), codes and categories as text, ``domestic`` a
    boolean or None. Read with the platform's database login (``PG_USER``).
    """
    import pandas as pd

    engine = sa.create_engine(settings.pg_url(settings.pg_monitoring_db, "postgresql+psycopg"),
                              poolclass=sa.pool.NullPool)
    query = (sa.select(*(TABLE.c[name] for name in READ_COLUMNS), TABLE.c.record)
             .where(TABLE.c.logged_at >= _utc(start), TABLE.c.logged_at < _utc(end))
             .order_by(TABLE.c.logged_at, TABLE.c.request_id, TABLE.c.item))
    try:
        with engine.connect() as conn:
            result = conn.execute(query).all()
    finally:
        engine.dispose()
    head = pd.DataFrame([row[:-1] for row in result], columns=list(READ_COLUMNS))
    head["logged_at"] = pd.to_datetime(head["logged_at"], utc=True)
    for name, dtype in (("item", "int64"), ("probability", "float64"), ("decision", "bool"),
                        ("threshold", "float64"), ("latency_ms", "float64")):
        head[name] = head[name].astype(dtype)
    fields = pd.DataFrame.from_records([row[-1] for row in result], columns=list(R.MODEL_FIELDS))
    fields["date"] = pd.to_datetime(fields["date"], errors="coerce", format="ISO8601")
    for name in R.NUMERIC_FIELDS:
        if name in fields.columns:
            fields[name] = pd.to_numeric(fields[name], errors="coerce").astype("float64")
    fields["domestic"] = fields["domestic"].astype(object)
    return pd.concat([head, fields], axis=1)
