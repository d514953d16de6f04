-- Soniq's PostgreSQL schema, version 14: rate limits (token buckets) and the limits of queues.

-- A rate-limited job's key: its rate_key argument's value as canonical JSON ('' for a rate on
-- the job name alone), stored in plain text also for encrypt=True jobs; NULL: no rate limit.
ALTER TABLE soniq_jobs ADD COLUMN rate_key text;
-- hold 'rate': a rate-limited job, claimed only with a token of its bucket, so it is not on the
-- plain claim's path (whose indexes hold rows with hold IS NULL). (Checking the stored rows is
-- one pass over the table; the old constraint was stricter, so they all pass.)
ALTER TABLE soniq_jobs DROP CONSTRAINT soniq_jobs_hold_check;
ALTER TABLE soniq_jobs ADD CONSTRAINT soniq_jobs_hold_check CHECK (hold IN ('slot', 'rate'));

-- The rate claim: a job name's claimable rows per bucket key, in claim order.
CREATE INDEX soniq_jobs_rated_idx ON soniq_jobs (job_name, rate_key, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold = 'rate';

-- A token bucket per job name and rate key ('' for the name alone): tokens as of refilled_at
-- (NULL: full), and a hold until blocked_until (a job raised RateLimited). Claims lock the row.
CREATE TABLE soniq_rate_buckets (
    job_name      text             NOT NULL,
    key           text             NOT NULL,
    tokens        double precision,
    refilled_at   timestamptz,
    blocked_until timestamptz,
    PRIMARY KEY (job_name, key)
);

-- A queue's rate bucket (NULL: full), kept with its settings; the gated claim locks the row.
ALTER TABLE soniq_queues ADD COLUMN tokens double precision;
ALTER TABLE soniq_queues ADD COLUMN refilled_at timestamptz;

-- A rate-limited job that is not parked holds its concurrency slot too: the recount of a key's
-- slot holders counts hold 'rate' rows (rebuilt under a new name, then renamed; limited rows
-- only, so it is small).
CREATE INDEX soniq_jobs_slot_holders_next_idx ON soniq_jobs (job_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND hold IS DISTINCT FROM 'slot'
      AND status IN ('queued', 'processing');
DROP INDEX soniq_jobs_slot_holders_idx;
ALTER INDEX soniq_jobs_slot_holders_next_idx RENAME TO soniq_jobs_slot_holders_idx;
