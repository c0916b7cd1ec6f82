#!/usr/bin/env bash
# First start of an empty PostgreSQL data directory (/docker-entrypoint-initdb.d): create the
# platform's databases (Airflow's metadata, MLflow's backend store and its accounts), owned by
# PG_USER.
# Safe to run again: a database that exists is left alone.
set -euo pipefail

# The platform's role: a login, not a superuser, no CREATEDB/CREATEROLE; its password is
# (re)set from PG_PASSWORD.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
     --set role="${PG_USER:?}" --set pw="${PG_PASSWORD:?}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER PASSWORD %L', :'role', :'pw')\gexec
SQL

for db in "${PG_AIRFLOW_DB:?}" "${PG_MLFLOW_DB:?}" "${PG_MLFLOW_AUTH_DB:?}"; do
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
       --set db="${db}" --set owner="${PG_USER}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
