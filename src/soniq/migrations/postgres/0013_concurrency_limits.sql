-- Soniq's PostgreSQL schema, version 13: concurrency limits (slots, parking, hand-over).

-- A limited job's key: the key argument's value as canonical JSON ('' for a limit on the job
-- name alone), stored in plain text also for encrypt=True jobs; NULL for a job without a limit.
ALTER TABLE soniq_jobs ADD COLUMN concurrency_key text;
-- NULL: claimable. 'slot': parked until a slot of its key is handed to it. (Room for other
-- reasons to hold a job later.)
ALTER TABLE soniq_jobs ADD COLUMN hold text
    CONSTRAINT soniq_jobs_hold_check CHECK (hold IN ('slot'));

-- Per job name and key: how many of its jobs are unparked and queued or processing. Never more
-- than the limit; jobs are parked only while it is at the limit. Inserts take a slot with
-- ON CONFLICT DO UPDATE (which locks the row), releases lock it before handing it over.
CREATE TABLE soniq_slots (
    job_name text    NOT NULL,
    key      text    NOT NULL,
    active   integer NOT NULL,
    PRIMARY KEY (job_name, key)
);

-- Parked jobs are not in the claim's path: the claim indexes hold claimable rows only (built
-- under new names, then renamed to the old ones).
CREATE INDEX soniq_jobs_claim_next_idx
    ON soniq_jobs (priority, scheduled_at, id) WHERE status = 'queued' AND hold IS NULL;
CREATE INDEX soniq_jobs_queue_claim_next_idx
    ON soniq_jobs (queue, priority, scheduled_at, id) WHERE status = 'queued' AND hold IS NULL;
DROP INDEX soniq_jobs_claim_idx;
DROP INDEX soniq_jobs_queue_claim_idx;
ALTER INDEX soniq_jobs_claim_next_idx RENAME TO soniq_jobs_claim_idx;
ALTER INDEX soniq_jobs_queue_claim_next_idx RENAME TO soniq_jobs_queue_claim_idx;

-- The hand-over: a key's oldest parked job (ids are UUIDv7: id order is enqueue order).
CREATE INDEX soniq_jobs_parked_idx ON soniq_jobs (job_name, concurrency_key, id)
    WHERE status = 'queued' AND hold = 'slot';
-- The reconciliation's recount: a key's jobs holding a slot (limited rows only).
CREATE INDEX soniq_jobs_slot_holders_idx ON soniq_jobs (job_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND hold IS NULL AND status IN ('queued', 'processing');
