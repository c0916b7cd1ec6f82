#!/usr/bin/env bash
# First start of an empty PostgreSQL data directory (/docker-entrypoint-initdb.d): create the
# platform's databases (Airflow's metadata, MLflow's backend store and its accounts, the
# prediction log, the training search's Optuna study), owned by PG_USER, and the prediction
# log's writer login.
# Safe to run again: a database or role that exists is left alone (passwords are reset).
set -euo pipefail

# The platform's role: a login, not a superuser, no CREATEDB/CREATEROLE; its password is
# (re)set from PG_PASSWORD.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
     --set role="${PG_USER:?}" --set pw="${PG_PASSWORD:?}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER PASSWORD %L', :'role', :'pw')\gexec
SQL

for db in "${PG_AIRFLOW_DB:?}" "${PG_MLFLOW_DB:?}" "${PG_MLFLOW_AUTH_DB:?}" "${PG_MONITORING_DB:?}" \
          "${PG_SEARCH_DB:?}"; do
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
       --set db="${db}" --set owner="${PG_USER}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')\gexec
SQL
done

# The prediction log's writer (the model server's only database login): no right beyond the
# monitoring database, where it creates its table; the platform's role reads what it writes.
# The same statements as the native stack (chicago_crime.devtools.hardening.pg_monitoring_sql).
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname postgres \
     --set role="${PG_MONITORING_USER:?}" --set pw="${PG_MONITORING_PASSWORD:?}" \
     --set db="${PG_MONITORING_DB}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS NOINHERIT CONNECTION LIMIT 50 PASSWORD %L', :'role', :'pw')\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'role')\gexec
SQL
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname "${PG_MONITORING_DB}" \
     --set role="${PG_MONITORING_USER}" --set platform="${PG_USER}" <<'SQL'
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('GRANT USAGE, CREATE ON SCHEMA public TO %I', :'role')\gexec
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public GRANT SELECT ON TABLES TO %I',
              :'role', :'platform')\gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', :'platform')\gexec
SQL

# pg_hba.conf (read when the server starts after these scripts): the writer may log in to the
# monitoring database only, rejected from every other one whatever the grants say. The lines
# go first: PostgreSQL uses the first line that matches.
hba="${PGDATA:?}/pg_hba.conf"
if ! grep -q 'chicago-crime prediction log writer' "${hba}"; then
  {
    echo "# chicago-crime prediction log writer: its database only"
    echo "host    \"${PG_MONITORING_DB}\"  \"${PG_MONITORING_USER}\"  all  scram-sha-256"
    echo "local   all  \"${PG_MONITORING_USER}\"  reject"
    echo "host    all  \"${PG_MONITORING_USER}\"  all  reject"
    cat "${hba}"
  } > "${hba}.new"
  chmod 600 "${hba}.new"
  mv "${hba}.new" "${hba}"
fi
