"""Chicago crime arrest prediction: the domain logic of the MLOps platform.

One module per lifecycle stage: ``config``, ``lake`` (S3 I/O), ``socrata`` (download),
``ingest``, ``features``, ``etl``, ``train``, ``tune``, ``evaluate``, ``registry``,
``predict`` and ``serve``.
"""

__version__ = "0.1.0"
