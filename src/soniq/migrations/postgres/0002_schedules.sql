-- Soniq's PostgreSQL schema, version 2: the recurring-job scheduler (app.scheduler, @app.periodic).

-- One row per schedule, keyed by its name. Exactly one of cron / every_seconds is set. queue and
-- priority NULL mean "the job's own default when it fires". next_run_at is the next fire time
-- not yet fired; every worker's scheduler reads the due rows each tick, so pauses and removals
-- made by any process are seen on the next tick.
CREATE TABLE soniq_schedules (
    name          text        PRIMARY KEY,
    job_name      text        NOT NULL,
    cron          text,
    every_seconds double precision,
    timezone      text        NOT NULL DEFAULT 'UTC',
    queue         text,
    priority      smallint,
    args          jsonb       NOT NULL DEFAULT '{}',
    paused        boolean     NOT NULL DEFAULT false,
    next_run_at   timestamptz NOT NULL,
    last_run_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT soniq_schedules_timing_check CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);

-- One row per (schedule, fire time) that enqueued a job, written in the same transaction as the
-- job: cron de-duplication is this constraint, not check-then-insert (DESIGN.md §7), so any
-- number of workers fire each time exactly once.
CREATE TABLE soniq_schedule_fires (
    schedule_name text        NOT NULL,
    fire_at       timestamptz NOT NULL,
    job_id        uuid        NOT NULL,
    fired_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT soniq_schedule_fires_once UNIQUE (schedule_name, fire_at)
);
