"""Chicago crime arrest prediction: the domain logic of the MLOps platform.

Core modules (``config``, ``layout``, ``lake``, ``portal``, ``socrata``, ``validation``,
``ingest``, ``features``, ``etl``), the model (``chicago_crime.model``), the API
(``chicago_crime.serve``) and developer tooling apart (``chicago_crime.devtools``).
"""

__version__ = "0.1.0"
