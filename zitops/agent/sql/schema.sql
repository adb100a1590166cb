-- Bootstrap, run at every start under the schema advisory lock (see
-- zitops/agent/storage/pg_schema.py): the zitops schema and its version table.
-- Everything else is created by the numbered files in migrations/, applied
-- in order, each once; schema_version records which ran.
CREATE SCHEMA IF NOT EXISTS zitops;

CREATE TABLE IF NOT EXISTS zitops.schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
