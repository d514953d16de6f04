-- Soniq's SQLite schema, version 9: concurrency limits (slots, parking, hand-over).

-- A limited job's key: the key argument's value as canonical JSON ('' for a limit on the job
-- name alone); NULL for a job without a limit.
ALTER TABLE soniq_jobs ADD COLUMN concurrency_key TEXT;
-- NULL: claimable. 'slot': parked until a slot of its key is handed to it.
ALTER TABLE soniq_jobs ADD COLUMN hold TEXT CHECK (hold IS NULL OR hold IN ('slot'));

-- Per job name and key: how many of its jobs are unparked and queued or processing (never more
-- than the limit; jobs are parked only while it is at the limit).
CREATE TABLE soniq_slots (
    job_name TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    active   INTEGER NOT NULL,
    PRIMARY KEY (job_name, key)
) WITHOUT ROWID;

-- Parked jobs are not in the claim's path: the claim indexes hold claimable rows only.
DROP INDEX soniq_jobs_claim;
DROP INDEX soniq_jobs_queue_claim;
CREATE INDEX soniq_jobs_claim ON soniq_jobs (priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL;
CREATE INDEX soniq_jobs_queue_claim ON soniq_jobs (queue, priority, scheduled_at, id)
    WHERE status = 'queued' AND hold IS NULL;

-- The hand-over: a key's oldest parked job.
CREATE INDEX soniq_jobs_parked ON soniq_jobs (job_name, concurrency_key, id)
    WHERE status = 'queued' AND hold = 'slot';
-- The reconciliation's recount: a key's jobs holding a slot.
CREATE INDEX soniq_jobs_slot_holders ON soniq_jobs (job_name, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND hold IS NULL AND status IN ('queued', 'processing');
