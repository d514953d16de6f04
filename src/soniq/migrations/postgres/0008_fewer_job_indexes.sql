-- Soniq's PostgreSQL schema, version 8: one index less on soniq_jobs.

-- (queue, status) served queue statistics and listing by queue and status. Every insert, claim
-- and finish paid for it (a status change rewrites every index entry of the row): dropping it
-- made enqueue_many about 20% faster here. Listing by status still has the partial indexes of
-- the claim (queued), the rescue (processing) and the dead-letter queue; by queue, the primary
-- key read newest first; the statistics read the table either way.
DROP INDEX soniq_jobs_queue_status_idx;
