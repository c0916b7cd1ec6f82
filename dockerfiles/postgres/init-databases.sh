#!/usr/bin/env bash
# First start of an empty PostgreSQL data directory (/docker-entrypoint-initdb.d): create the
# platform's databases (Airflow's metadata, MLflow's backend store and its accounts), owned by
# PG_USER.
# Safe to run again: a database that exists is left alone.
set -euo pipefail

for db in "${PG_AIRFLOW_DB:?}" "${PG_MLFLOW_DB:?}" "${PG_MLFLOW_AUTH_DB:?}"; do
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
       --set db="${db}" --set owner="${POSTGRES_USER}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
