-- Soniq's PostgreSQL schema, version 1. Applied once by `soniq setup` (inside one transaction
-- together with its soniq_migrations row), so nothing here says IF NOT EXISTS.

-- One table holds every job in every state. The hot path (DESIGN.md §4) is: insert queued rows,
-- claim them through a partial index that holds only queued rows, finish them by primary key.
CREATE TABLE soniq_jobs (
    id            uuid        PRIMARY KEY,      -- UUIDv7: time-ordered, so inserts stay local
    job_name      text        NOT NULL,
    queue         text        NOT NULL,
    priority      smallint    NOT NULL,         -- lower runs first
    status        text        NOT NULL,
    args          jsonb       NOT NULL,
    result        jsonb,
    attempts      integer     NOT NULL DEFAULT 0,  -- counted by the claim, not by the finish
    max_attempts  integer     NOT NULL,
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    expires_at    timestamptz,                  -- finished rows are pruned after this
    errors        jsonb       NOT NULL DEFAULT '[]',
    -- No foreign key to soniq_workers: a finish must not have to check (or lock) a worker row.
    worker_id     uuid,
    lease_id      uuid,                         -- fences every write after a claim
    dedup_key     text,
    -- Set by cancel_job on a running job; its worker sees it at the next heartbeat (or at once via
    -- NOTIFY soniq_cancel), and an attempt that would go back to the queue ends cancelled.
    cancel_requested boolean  NOT NULL DEFAULT false,
    CONSTRAINT soniq_jobs_status_check
        CHECK (status IN ('queued', 'processing', 'done', 'dead_letter', 'cancelled')),
    -- A dedup key is held only while the job waits for its first run; every transition out of
    -- 'queued' must release it, and the database refuses any write that forgets to.
    CONSTRAINT soniq_jobs_dedup_key_queued_check
        CHECK (dedup_key IS NULL OR status = 'queued')
);

-- The claim: ORDER BY priority, scheduled_at, id over queued rows, with no queue filter or with
-- queue = ANY($1). Rows leave this index when they leave 'queued', so it stays the size of the
-- backlog, and its order is the claim's order: no sort, whatever the filter.
CREATE INDEX soniq_jobs_claim_idx
    ON soniq_jobs (priority, scheduled_at, id) WHERE status = 'queued';

-- The single-queue claim (queue = $1): an exact prefix, so it reads only that queue's rows.
CREATE INDEX soniq_jobs_queue_claim_idx
    ON soniq_jobs (queue, priority, scheduled_at, id) WHERE status = 'queued';

-- Uniqueness is a constraint, not check-then-insert: INSERT ... ON CONFLICT uses this index.
CREATE UNIQUE INDEX soniq_jobs_dedup_key_idx
    ON soniq_jobs (dedup_key) WHERE dedup_key IS NOT NULL;

-- Queue statistics and listing by queue/status (dashboard, CLI).
CREATE INDEX soniq_jobs_queue_status_idx ON soniq_jobs (queue, status);

-- Pruning finished rows whose result_ttl has passed.
CREATE INDEX soniq_jobs_expires_at_idx ON soniq_jobs (expires_at) WHERE expires_at IS NOT NULL;
-- The dead-letter queue lists newest first and purges by age without scanning finished jobs.
CREATE INDEX soniq_jobs_dead_letter_idx ON soniq_jobs (finished_at DESC, id DESC)
    WHERE status = 'dead_letter';

-- Rescuing the jobs of a worker that stopped heartbeating.
CREATE INDEX soniq_jobs_worker_id_idx ON soniq_jobs (worker_id) WHERE status = 'processing';

-- Live workers and their heartbeats. Deliberately no index on last_heartbeat: the table is tiny,
-- and an unindexed heartbeat column keeps its frequent UPDATEs heap-only (HOT).
CREATE TABLE soniq_workers (
    id              uuid        PRIMARY KEY,
    hostname        text        NOT NULL,
    pid             integer     NOT NULL,
    queues          text[],                     -- NULL: every queue
    concurrency     integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    metadata        jsonb       NOT NULL DEFAULT '{}'
);

-- One row per periodic maintenance task (rescue, prune, ...): the worker whose upsert moves
-- last_run_at forward is that round's leader, so N workers do the work once per interval.
CREATE TABLE soniq_maintenance (
    task         text        PRIMARY KEY,
    last_run_at  timestamptz NOT NULL
);
