-- Soniq's SQLite schema, version 14: the saved steps of durable functions (see the PostgreSQL
-- migration 0020). Foreign keys are on for every connection: the rows go with their job.
CREATE TABLE soniq_steps (
    job_id TEXT NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    step_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    function TEXT NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'error', 'sleep', 'marker')),
    value TEXT,
    lease_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, step_key)
);
