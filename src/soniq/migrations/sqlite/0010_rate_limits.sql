-- Soniq's SQLite schema, version 10: rate limits (token buckets) and the limits of queues (see
-- the PostgreSQL migration 0014).

-- A rate-limited job's key: its rate_key argument's value as canonical JSON ('' for a rate on
-- the job name alone); NULL: no rate limit. SQLite cannot change the hold CHECK, so a
-- rate-limited row keeps hold NULL and is kept off the plain claim's path by the claim indexes'
-- predicate (the plain claim says rate_key IS NULL literally).
ALTER TABLE soniq_jobs ADD COLUMN rate_key TEXT;

DROP INDEX soniq_jobs_claim;
DROP INDEX soniq_jobs_queue_claim;
CREATE INDEX soniq_jobs_claim ON soniq_jobs (priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;
CREATE INDEX soniq_jobs_queue_claim ON soniq_jobs (queue, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL;

-- The rate claim: a job name's claimable rows per bucket key, in claim order.
CREATE INDEX soniq_jobs_rated ON soniq_jobs (job_name, rate_key, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL AND rate_key IS NOT NULL;

-- A token bucket per job name and rate key ('' for the name alone): tokens as of refilled_at
-- (NULL: full), and a hold until blocked_until (a job raised RateLimited).
CREATE TABLE soniq_rate_buckets (
    job_name      TEXT NOT NULL,
    key           TEXT NOT NULL,
    tokens        REAL,
    refilled_at   TEXT,
    blocked_until TEXT,
    PRIMARY KEY (job_name, key)
) WITHOUT ROWID;

-- A queue's rate bucket (NULL: full), kept with its settings.
ALTER TABLE soniq_queues ADD COLUMN tokens REAL;
ALTER TABLE soniq_queues ADD COLUMN refilled_at TEXT;
