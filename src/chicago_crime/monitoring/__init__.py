"""Monitoring of the served model: what it predicted (``prediction_log``) and how its inputs and
outcomes drift."""
