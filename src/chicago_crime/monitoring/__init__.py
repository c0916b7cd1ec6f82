"""Monitoring of the served model: what it predicted (``prediction_log``), how its inputs and
outcomes drift, and the metrics that reach Prometheus."""
