#!/usr/bin/env bash
# Runs once, when the postgres container starts on an EMPTY data volume (the image runs the files in
# /docker-entrypoint-initdb.d; compose.yaml mounts this folder there). It creates one login role and
# one database each for Prefect and MLflow, and the pg_trgm extension Prefect uses. Idempotent (safe
# if a role or database already exists, or if both services share one role). Changing the names or
# passwords in docker/.env later does NOT change an initialized volume: alter the roles with psql,
# or remove the volume (`docker compose down -v` deletes all tracked data).
set -euo pipefail

: "${PREFECT_DB_NAME:?}" "${PREFECT_DB_USER:?}" "${PREFECT_DB_PASSWORD:?}"
: "${MLFLOW_DB_NAME:?}" "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}"

# Values travel as psql variables (:'x' quotes a literal, %I/%L quote in format()), never spliced
# into SQL text by the shell.
create_db() {  # database role password
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    -v db="$1" -v role="$2" -v pass="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'pass')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
}

create_db "$PREFECT_DB_NAME" "$PREFECT_DB_USER" "$PREFECT_DB_PASSWORD"
create_db "$MLFLOW_DB_NAME" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$PREFECT_DB_NAME" \
  -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm'
