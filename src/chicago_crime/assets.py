"""The Airflow assets of the platform, declared once for the DAGs that produce and consume them.

``etl_with_taskflow`` updates :data:`ML_READY` when a month's ML-ready dataset is in the lake
(the event's ``extra`` names the month and its selected features); ``train_model`` is scheduled
on it. The asset is identified by name only (its URI is the name): declaring it needs no
settings, so DAG files import this module at parse time for free; where the data lives is in
the event and in :mod:`chicago_crime.layout`.
"""

from __future__ import annotations

from airflow.sdk import Asset

ML_READY_NAME = "chicago_crimes_ml_ready"
ML_READY = Asset(name=ML_READY_NAME)
