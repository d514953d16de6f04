-- Soniq's SQLite schema, version 7: job definitions (see the PostgreSQL migration 0011).
-- first_seen_at is set on insert only; the current definition of a name is its latest one.
CREATE TABLE soniq_job_definitions (
    name          TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    queue         TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    timeout       REAL,                        -- NULL: no timeout
    encrypt       INTEGER NOT NULL DEFAULT 0,
    options       TEXT    NOT NULL DEFAULT '{}',  -- JSON object
    first_seen_at TEXT    NOT NULL,
    last_seen_at  TEXT    NOT NULL,
    PRIMARY KEY (name, digest)
);

-- The job names each worker registered, as a JSON array.
ALTER TABLE soniq_workers ADD COLUMN job_names TEXT NOT NULL DEFAULT '[]';
