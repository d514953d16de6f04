-- Soniq's SQLite schema, version 13: progress and checkpoints of running jobs (see the
-- PostgreSQL migration 0019). Nullable without a default: adding them rewrites no row.
ALTER TABLE soniq_jobs ADD COLUMN progress TEXT;
ALTER TABLE soniq_jobs ADD COLUMN checkpoint TEXT;
