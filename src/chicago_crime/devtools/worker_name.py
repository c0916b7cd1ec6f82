"""The host name a native Celery worker's task instances record (Airflow's
``[core] hostname_callable``).

Several workers of the native stack share one machine; Airflow records the host's name for
each task instance, so they would be indistinguishable. The extra workers
(``AIRFLOW_WORKERS`` > 1) record ``airflow-worker-N@host`` instead, their Celery node name.
Their task logs stay readable: the native stack's workers write to one shared log folder.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``CHICAGO_CRIME_WORKER_NAME@host`` (the worker's Celery node name: Celery's ``%h`` is
    ``socket.gethostname()``) when the worker has a name, else the host name."""
    name = os.environ.get("CHICAGO_CRIME_WORKER_NAME", "").strip()
    host = socket.gethostname()
    return f"{name}@{host}" if name else host


def worker_of(recorded: str | None, default: str = "airflow-worker") -> str:
    """The worker program that ran a task instance, from the host name it recorded (the
    inverse of :func:`hostname`): ``airflow-worker-N@host`` -> ``airflow-worker-N``; a bare
    host name is the first worker, ``default``."""
    name, at, _ = (recorded or "").partition("@")
    return name if at and name else default
