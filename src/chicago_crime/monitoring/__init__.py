"""Monitoring of the served model: drift and decay per month (``monitor_model``)."""
