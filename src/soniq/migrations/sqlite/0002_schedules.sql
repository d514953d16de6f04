-- Soniq's SQLite schema, version 2: the recurring-job scheduler (app.scheduler, @app.periodic).
-- Timestamps are TEXT in the fixed-width UTC form of version 1; args is JSON text.

-- One row per schedule, keyed by its name; exactly one of cron / every_seconds is set.
CREATE TABLE soniq_schedules (
    name          TEXT    PRIMARY KEY NOT NULL,
    job_name      TEXT    NOT NULL,
    cron          TEXT,
    every_seconds REAL,
    timezone      TEXT    NOT NULL DEFAULT 'UTC',
    queue         TEXT,
    priority      INTEGER,
    args          TEXT    NOT NULL DEFAULT '{}',
    paused        INTEGER NOT NULL DEFAULT 0,
    next_run_at   TEXT    NOT NULL,
    last_run_at   TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);

-- One row per (schedule, fire time) that enqueued a job, written in the job's transaction: the
-- constraint makes each fire time enqueue exactly once across processes.
CREATE TABLE soniq_schedule_fires (
    schedule_name TEXT NOT NULL,
    fire_at       TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    fired_at      TEXT NOT NULL,
    UNIQUE (schedule_name, fire_at)
);
