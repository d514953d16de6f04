-- Soniq's SQLite schema, version 8: queue settings and the audit log (see the PostgreSQL
-- migration 0012).

-- A queue's settings, stored once something is set on it (no row: not paused, no limits). The
-- claim skips queues paused here.
CREATE TABLE soniq_queues (
    name              TEXT    NOT NULL PRIMARY KEY,
    paused            INTEGER NOT NULL DEFAULT 0,
    concurrency_limit INTEGER CHECK (concurrency_limit IS NULL OR concurrency_limit > 0),
    rate_limit        TEXT,                     -- 'N/s', 'N/m' or 'N/h'
    updated_at        TEXT    NOT NULL
);

-- Every change made through the API, the CLI or the dashboard (and refused dashboard writes).
CREATE TABLE soniq_audit (
    id      INTEGER PRIMARY KEY,               -- newest first is id order
    at      TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    client  TEXT,
    action  TEXT    NOT NULL,
    targets TEXT    NOT NULL DEFAULT '[]',     -- JSON array of text
    outcome TEXT    NOT NULL,
    detail  TEXT
);
