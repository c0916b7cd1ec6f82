#!/usr/bin/env bash
# Entrypoint of the Airflow image: write SimpleAuthManager's passwords file from
# AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD (so no password is baked into the image or printed
# to the logs), then hand over to the official entrypoint with the same arguments.
set -euo pipefail

passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}"
if [[ -n "${passwords_file}" ]]; then
  : "${AIRFLOW_ADMIN_USER:?AIRFLOW_ADMIN_USER is not set (see .env)}"
  : "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set (see .env)}"
  mkdir -p "$(dirname "${passwords_file}")"
  (
    umask 077
    python3 -c 'import json, os, sys
json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, sys.stdout)' \
      > "${passwords_file}"
  )
fi

exec "${AIRFLOW_OFFICIAL_ENTRYPOINT:-/entrypoint}" "$@"
