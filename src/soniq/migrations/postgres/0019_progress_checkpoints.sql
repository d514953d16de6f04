-- Soniq's PostgreSQL schema, version 19: progress and checkpoints of running jobs.

-- The latest value a running job reported with ctx.progress (a number or a small JSON object),
-- and the state it last saved with ctx.checkpoint (JSON text encoded like a result: encrypted for
-- encrypt=True jobs), which the job's next attempt reads. Both are written only under the job's
-- lease. Nullable without a default: adding them rewrites no row.
ALTER TABLE soniq_jobs ADD COLUMN progress jsonb;
ALTER TABLE soniq_jobs ADD COLUMN checkpoint text;
