"""Model monitoring: drift, monthly quality, and the metrics that reach Prometheus."""
