-- Soniq's SQLite schema, version 12: uniqueness with windows and debounce (see the PostgreSQL
-- migration 0017).
--
-- Each dedup key has a row in soniq_unique_keys naming the job that last took it and, for
-- unique_for, until when it blocks whatever that job's status (NULL: no window); inserts decide
-- in their write transaction (soniq/backends/keys.py). The keys held today move there, and
-- soniq_jobs loses the unique index on dedup_key and the CHECK that kept the key on rows not
-- started (dedup_key stays: the key a job took, shown until it starts).
CREATE TABLE soniq_unique_keys (
    key        TEXT PRIMARY KEY NOT NULL,
    job_id     TEXT NOT NULL,
    expires_at TEXT,
    taken_at   TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO soniq_unique_keys (key, job_id, expires_at, taken_at)
SELECT dedup_key, id, NULL, created_at FROM soniq_jobs WHERE dedup_key IS NOT NULL;

-- SQLite cannot drop a CHECK: soniq_jobs is rebuilt as migration 11 did (the migration runner
-- turns foreign keys off around a migration and checks them before it commits), every column
-- and index as version 11 left them, without the dedup key's CHECK and unique index.
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
    waiting_on   INTEGER,
    on_dependency_failure TEXT CHECK (on_dependency_failure IN ('cancel', 'run', 'wait')),
    has_dependents INTEGER NOT NULL DEFAULT 0,
    workflow_id  TEXT,
    step_name    TEXT
);

INSERT INTO soniq_jobs_new (
    id, job_name, queue, priority, status, args, result, attempts, max_attempts, scheduled_at,
    created_at, updated_at, started_at, finished_at, expires_at, errors, worker_id, lease_id,
    dedup_key, cancel_requested, concurrency_key, hold, rate_key, waiting_on,
    on_dependency_failure, has_dependents, workflow_id, step_name)
SELECT id, job_name, queue, priority, status, args, result, attempts, max_attempts, scheduled_at,
       created_at, updated_at, started_at, finished_at, expires_at, errors, worker_id, lease_id,
       dedup_key, cancel_requested, concurrency_key, hold, rate_key, waiting_on,
       on_dependency_failure, has_dependents, workflow_id, step_name
FROM soniq_jobs;

DROP TABLE soniq_jobs;
ALTER TABLE soniq_jobs_new RENAME TO soniq_jobs;

CREATE INDEX soniq_jobs_claim ON soniq_jobs (priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;
CREATE INDEX soniq_jobs_queue_claim ON soniq_jobs (queue, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;
CREATE INDEX soniq_jobs_queue_status ON soniq_jobs (queue, status);
CREATE INDEX soniq_jobs_expires_at ON soniq_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX soniq_jobs_dead_letter ON soniq_jobs (finished_at DESC, id DESC)
    WHERE status = 'dead_letter';
CREATE INDEX soniq_jobs_worker_id ON soniq_jobs (worker_id) WHERE status = 'processing';
CREATE INDEX soniq_jobs_parked ON soniq_jobs (job_name, concurrency_key, id)
    WHERE status = 'queued' AND hold = 'slot';
CREATE INDEX soniq_jobs_slot_holders ON soniq_jobs (job_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND hold IS NULL AND status IN ('queued', 'processing');
CREATE INDEX soniq_jobs_rated ON soniq_jobs (job_name, rate_key, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NOT NULL;
CREATE INDEX soniq_jobs_workflow ON soniq_jobs (workflow_id, id) WHERE workflow_id IS NOT NULL;
CREATE INDEX soniq_jobs_cancelled ON soniq_jobs (finished_at)
    WHERE status = 'cancelled' AND expires_at IS NULL;
