-- Soniq's PostgreSQL schema, version 17: uniqueness with windows and debounce.
--
-- A dedup key no longer lives only on a queued job's row (the partial unique index on
-- soniq_jobs.dedup_key, and the CHECK that kept it on rows not started): each key has a row here
-- naming the job that last took it and, for unique_for, until when it blocks whatever that job's
-- status (NULL: no window). Inserts lock the key's row (INSERT ... ON CONFLICT DO UPDATE) and
-- decide in the same transaction (soniq/backends/keys.py). soniq_jobs.dedup_key stays: the key a
-- job took, shown until it starts (the claim clears it, as before).
CREATE TABLE soniq_unique_keys (
    key        text        PRIMARY KEY,
    job_id     uuid        NOT NULL,
    expires_at timestamptz,
    taken_at   timestamptz NOT NULL DEFAULT now()
);

-- The keys held today: each by its waiting or queued job, with no window.
INSERT INTO soniq_unique_keys (key, job_id, taken_at)
SELECT dedup_key, id, created_at FROM soniq_jobs WHERE dedup_key IS NOT NULL;

DROP INDEX soniq_jobs_dedup_key_idx;
ALTER TABLE soniq_jobs DROP CONSTRAINT soniq_jobs_dedup_key_queued_check;
