-- Soniq's SQLite schema, version 1.
--
-- Timestamps are TEXT in one fixed-width UTC form, 'YYYY-MM-DDTHH:MM:SS.ffffffZ', so comparing
-- the text compares the instants and SQLite's date functions still understand the values.
-- args / result / errors are JSON text; ids are UUID strings.

CREATE TABLE soniq_jobs (
    id           TEXT    PRIMARY KEY NOT NULL,
    job_name     TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    status       TEXT    NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'done', 'dead_letter', 'cancelled')),
    args         TEXT    NOT NULL DEFAULT '{}',
    result       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    scheduled_at TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    expires_at   TEXT,
    errors       TEXT    NOT NULL DEFAULT '[]',
    worker_id    TEXT,
    lease_id     TEXT,
    dedup_key    TEXT,
    -- Set by cancel_job on a running job (0/1); its worker sees it at the next heartbeat, and
    -- an attempt that would go back to the queue ends cancelled.
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- A dedup key is held only while the job waits for its first run.
    CHECK (dedup_key IS NULL OR status = 'queued')
);

-- Exactly what the claim reads: due queued jobs in priority, scheduled_at, id order. Finished
-- rows leave the index, so it stays as small as the backlog.
CREATE INDEX soniq_jobs_claim ON soniq_jobs (priority, scheduled_at, id) WHERE status = 'queued';

-- The single-queue claim (queue = ?): an exact prefix, so it reads only that queue's rows.
CREATE INDEX soniq_jobs_queue_claim
    ON soniq_jobs (queue, priority, scheduled_at, id) WHERE status = 'queued';

-- Queue filters in list_jobs and the GROUP BY of queue_stats.
CREATE INDEX soniq_jobs_queue_status ON soniq_jobs (queue, status);

-- Pruning finished rows whose result_ttl has passed.
CREATE INDEX soniq_jobs_expires_at ON soniq_jobs (expires_at) WHERE expires_at IS NOT NULL;
-- The dead-letter queue lists newest first and purges by age without scanning finished jobs.
CREATE INDEX soniq_jobs_dead_letter ON soniq_jobs (finished_at DESC, id DESC)
    WHERE status = 'dead_letter';

-- Rescuing the jobs of a worker that stopped heartbeating.
CREATE INDEX soniq_jobs_worker_id ON soniq_jobs (worker_id) WHERE status = 'processing';

-- De-duplication is a constraint, not check-then-insert: one queued job per key.
CREATE UNIQUE INDEX soniq_jobs_dedup_key ON soniq_jobs (dedup_key) WHERE dedup_key IS NOT NULL;

-- Live workers and their heartbeats (a handful of rows: no index beyond the key).
CREATE TABLE soniq_workers (
    id             TEXT    PRIMARY KEY NOT NULL,
    hostname       TEXT    NOT NULL,
    pid            INTEGER NOT NULL,
    queues         TEXT,                       -- JSON array of queue names; NULL = all queues
    concurrency    INTEGER NOT NULL,
    started_at     TEXT    NOT NULL,
    last_heartbeat TEXT    NOT NULL,
    metadata       TEXT    NOT NULL DEFAULT '{}'
);

-- One row per periodic maintenance task (rescue, prune, ...): the worker whose upsert moves
-- last_run_at forward is that round's leader, so N workers do the work once per interval.
CREATE TABLE soniq_maintenance (
    task        TEXT PRIMARY KEY NOT NULL,
    last_run_at TEXT NOT NULL
);
