"""The API's routers, one module per resource: ``predict``, ``model``, ``operations``."""

from __future__ import annotations

from chicago_crime.serve.routes import model, operations, predict

ROUTERS = (operations.router, predict.router, model.router)
