"""Chicago crime arrest prediction: the domain logic of the MLOps platform.

Core modules (``config``, ``layout``, ``lake``, ``portal``, ``socrata``, ``validation``,
``ingest``, ``features``, ``etl``), the model (``chicago_crime.model``), the API
(``chicago_crime.serve``) and developer tooling apart (``chicago_crime.devtools``).
"""

import os

# MLflow's telemetry thread reads os.environ while tasks change it (KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID' seen in training); the platform sends no telemetry anyway.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
