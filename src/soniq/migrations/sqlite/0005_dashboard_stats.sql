-- Soniq's SQLite schema, version 5: per-minute rollups of finished jobs for the dashboard's
-- charts (see the PostgreSQL migration of the same number). bucket is TEXT in the fixed-width
-- UTC form of version 1.
CREATE TABLE soniq_stats_minute (
    bucket       TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    dead_letter  INTEGER NOT NULL DEFAULT 0,
    cancelled    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, queue)
);
