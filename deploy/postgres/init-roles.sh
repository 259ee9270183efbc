#!/bin/sh
# Run once by the postgres image at first start (/docker-entrypoint-initdb.d):
# one role per service, owning its database, which PUBLIC may not connect
# to (docs/security.md, "Least privilege"). The services then migrate their
# own databases as their own roles; neither role may create databases.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v auth_password="$AUTH_DB_PASSWORD" -v task_password="$TASK_DB_PASSWORD" <<'SQL'
CREATE ROLE "memberflow_auth" LOGIN PASSWORD :'auth_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE "auth" OWNER "memberflow_auth";
REVOKE CONNECT, TEMPORARY ON DATABASE "auth" FROM PUBLIC;
CREATE ROLE "memberflow_task" LOGIN PASSWORD :'task_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE "task" OWNER "memberflow_task";
REVOKE CONNECT, TEMPORARY ON DATABASE "task" FROM PUBLIC;
SQL
