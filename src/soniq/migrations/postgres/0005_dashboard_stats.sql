-- Soniq's PostgreSQL schema, version 5: per-minute rollups of finished jobs for the dashboard's
-- charts, so no request counts the jobs table over time. The dashboard recounts recent minutes
-- periodically and keeps the larger count (see DashboardStore.rollup); old buckets are deleted.
CREATE TABLE soniq_stats_minute (
    bucket       timestamptz NOT NULL,   -- the minute's start
    queue        text        NOT NULL,
    done         integer     NOT NULL DEFAULT 0,
    dead_letter  integer     NOT NULL DEFAULT 0,
    cancelled    integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, queue)
);
