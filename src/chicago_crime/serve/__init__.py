"""FastAPI model server: ``uvicorn chicago_crime.serve.app:app`` (see docs/api.md)."""

import os

# One BLAS/OpenMP thread per server process: with the default (one per core) p99 latency
# explodes on a busy 2-core host. Must be set before numpy is imported to take effect.
os.environ.setdefault("OMP_NUM_THREADS", "1")
