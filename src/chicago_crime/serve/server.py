"""Start the model server: uvicorn's parent process, after emptying the shared metrics directory.

    python -m chicago_crime.serve.server --host H --port P --workers N [uvicorn options]

The same as ``uvicorn chicago_crime.serve.app:app ...`` (the app is implied), plus one step
before uvicorn starts: with ``PROMETHEUS_MULTIPROC_DIR`` set, the directory where every worker
writes its metrics is created (mode 700) or emptied. It must happen once per server, in the
parent, before any worker writes: a worker cannot tell a file of a previous server from one of
its sibling, and a rolling restart (SIGHUP) replaces workers without restarting the parent, so
their counters stay in the sum (the totals never go back). Both stacks start the API with this
module (the native stack's supervisord program, the Compose image's command).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "chicago_crime.serve.app:app"
#: prometheus_client's variable (serve.metrics.MULTIPROC_ENV; not imported: the parent stays
#: light, it never loads the app nor prometheus_client)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def reset_metrics_dir(path: Path) -> int:
    """Create ``path`` or remove the metric files a previous server left in it; their count."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = 0
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    shared = os.environ.get(MULTIPROC_ENV)
    if shared:
        removed = reset_metrics_dir(Path(shared))
        print(f"server: metrics of every worker in {shared} (removed {removed} stale files)",
              flush=True)
    import uvicorn

    uvicorn.main.main(args=[APP, *args], prog_name="uvicorn")


if __name__ == "__main__":
    main()
