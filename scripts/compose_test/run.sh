#!/usr/bin/env bash
# make test-compose: install the engine, start a loopback-only dockerd, run the Compose test
# (scripts/compose_test/run.py: images, override, up, journey, down -v), and stop dockerd by its
# PID on every exit path (success, failure, Ctrl-C, TERM).
#
#   bash scripts/compose_test/run.sh [PYTHON] [run.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-.venv/bin/python}"
shift || true

source scripts/compose_test/engine.sh
started=$(date +%s)
trap 'engine_stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

engine_install
engine_start
echo "[compose-test] engine ready in $(( $(date +%s) - started )) s"
"${PYTHON}" scripts/compose_test/run.py "$@"
