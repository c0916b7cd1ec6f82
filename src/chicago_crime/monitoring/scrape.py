"""Prometheus' scrape configuration for the native stack, from the one file Compose uses too.

``monitoring/prometheus/prometheus.yml`` names its targets through ``file_sd_configs``
(``targets/<job>.json`` beside the file), so the scrape jobs are written once: Compose mounts the
file with ``monitoring/prometheus/targets/`` (in-network host names), and the native stack
copies it next to target files with its own loopback ports (``write_native_config``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chicago_crime.config import Settings

REPO = Path(__file__).resolve().parents[3]
SCRAPE_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus.yml"
COMPOSE_TARGETS = REPO / "monitoring" / "prometheus" / "targets"
#: The scrape jobs of prometheus.yml, each with one target file.
JOBS = ("prometheus", "model-api", "pushgateway", "airflow")
LOOPBACK = "127.0.0.1"


def native_targets(settings: Settings, api_host: str = LOOPBACK) -> dict[str, list[str]]:
    """``host:port`` of each job on the native stack (the API listens on ``BIND_HOST``; the
    monitoring services on loopback)."""
    s = settings
    return {
        "prometheus": [f"{LOOPBACK}:{s.prometheus_port}"],
        "model-api": [f"{api_host}:{s.fastapi_port}"],
        "pushgateway": [f"{LOOPBACK}:{s.pushgateway_port}"],
        "airflow": [f"{LOOPBACK}:{s.otlp_bridge_port}"],
    }


def target_file(targets: list[str], stack: str) -> str:
    return json.dumps([{"targets": targets, "labels": {"stack": stack}}], indent=2) + "\n"


def write_native_config(dest: Path, settings: Settings, api_host: str = LOOPBACK) -> Path:
    """Copy prometheus.yml into ``dest`` with this stack's target files; returns its path.

    Target files are replaced atomically (Prometheus re-reads them when they change)."""
    (dest / "targets").mkdir(parents=True, exist_ok=True)
    config = dest / "prometheus.yml"
    shutil.copyfile(SCRAPE_CONFIG, config)
    for job, targets in native_targets(settings, api_host).items():
        path = dest / "targets" / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(target_file(targets, "native"))
        tmp.replace(path)
    return config
