-- Soniq's SQLite schema, version 11: jobs that wait for other jobs (dependencies, workflows,
-- batches; see the PostgreSQL migration 0015).
--
-- SQLite cannot change a CHECK, so soniq_jobs is rebuilt: the new table with every column and
-- constraint, 'waiting' added to the status CHECK and to the dedup key's (a dedup key holds while
-- a job waits, too), and the new columns; the rows copied; the old table dropped and the new one
-- renamed; every index re-created as migrations 1, 9 and 10 left it. The migration runner turns
-- foreign keys off around a migration (soniq_job_logs references soniq_jobs: a DROP TABLE would
-- delete the logs with it) and checks them before it commits.
CREATE TABLE soniq_jobs_new (
    id           TEXT    PRIMARY KEY NOT NULL,
    job_name     TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    status       TEXT    NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('waiting', 'queued', 'processing', 'done', 'dead_letter',
                                   'cancelled')),
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
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    hold         TEXT    CHECK (hold IS NULL OR hold IN ('slot')),
    rate_key     TEXT,
    -- A dependent job: how many of its dependency edges are not satisfied yet (NULL: it has no
    -- dependencies), and what a failed dependency does to it.
    waiting_on   INTEGER,
    on_dependency_failure TEXT CHECK (on_dependency_failure IN ('cancel', 'run', 'wait')),
    -- A dependency: some job depends on it (0/1, set by the dependent's insert).
    has_dependents INTEGER NOT NULL DEFAULT 0,
    -- The workflow or batch a job is a step of, and its step name there.
    workflow_id  TEXT,
    step_name    TEXT,
    CHECK (dedup_key IS NULL OR status IN ('waiting', 'queued'))
);

INSERT INTO soniq_jobs_new (
    id, job_name, queue, priority, status, args, result, attempts, max_attempts, scheduled_at,
    created_at, updated_at, started_at, finished_at, expires_at, errors, worker_id, lease_id,
    dedup_key, cancel_requested, concurrency_key, hold, rate_key)
SELECT id, job_name, queue, priority, status, args, result, attempts, max_attempts, scheduled_at,
       created_at, updated_at, started_at, finished_at, expires_at, errors, worker_id, lease_id,
       dedup_key, cancel_requested, concurrency_key, hold, rate_key
FROM soniq_jobs;

DROP TABLE soniq_jobs;
ALTER TABLE soniq_jobs_new RENAME TO soniq_jobs;

-- Version 1's indexes (the claim indexes as version 10 left them).
CREATE INDEX soniq_jobs_claim ON soniq_jobs (priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;
CREATE INDEX soniq_jobs_queue_claim ON soniq_jobs (queue, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;
CREATE INDEX soniq_jobs_queue_status ON soniq_jobs (queue, status);
CREATE INDEX soniq_jobs_expires_at ON soniq_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX soniq_jobs_dead_letter ON soniq_jobs (finished_at DESC, id DESC)
    WHERE status = 'dead_letter';
CREATE INDEX soniq_jobs_worker_id ON soniq_jobs (worker_id) WHERE status = 'processing';
CREATE UNIQUE INDEX soniq_jobs_dedup_key ON soniq_jobs (dedup_key) WHERE dedup_key IS NOT NULL;
-- Version 9's (concurrency limits).
CREATE INDEX soniq_jobs_parked ON soniq_jobs (job_name, concurrency_key, id)
    WHERE status = 'queued' AND hold = 'slot';
CREATE INDEX soniq_jobs_slot_holders ON soniq_jobs (job_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND hold IS NULL AND status IN ('queued', 'processing');
-- Version 10's (rate limits).
CREATE INDEX soniq_jobs_rated ON soniq_jobs (job_name, rate_key, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NOT NULL;
-- A workflow's steps.
CREATE INDEX soniq_jobs_workflow ON soniq_jobs (workflow_id, id) WHERE workflow_id IS NOT NULL;
-- Jobs cancelled before they started (no expires_at): pruned result_ttl after they were cancelled.
CREATE INDEX soniq_jobs_cancelled ON soniq_jobs (finished_at)
    WHERE status = 'cancelled' AND expires_at IS NULL;

-- One row per edge: dependent waits for dependency. satisfied (0/1): counted off the
-- dependent's waiting_on (once: a replayed dependency never counts twice). An edge goes with its
-- dependent.
CREATE TABLE soniq_dependencies (
    dependency TEXT    NOT NULL,
    dependent  TEXT    NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    satisfied  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dependency, dependent)
) WITHOUT ROWID;
CREATE INDEX soniq_dependencies_dependent ON soniq_dependencies (dependent);

-- Workflows and batches: a name for humans; their steps are the jobs with this workflow_id.
CREATE TABLE soniq_workflows (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL DEFAULT 'workflow' CHECK (kind IN ('workflow', 'batch')),
    created_at TEXT NOT NULL
);
