-- Soniq's SQLite schema, version 14: the saved steps of durable functions (see the PostgreSQL
-- migration 0020). Steps go with their job through a trigger called only for jobs whose first
-- step write set has_steps, not a foreign key (whose cascade looks up every deleted job).
CREATE TABLE soniq_steps (
    job_id TEXT NOT NULL,
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

ALTER TABLE soniq_jobs ADD COLUMN has_steps INTEGER;

CREATE TRIGGER soniq_jobs_forget_steps
    AFTER DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN OLD.has_steps
BEGIN
    DELETE FROM soniq_steps WHERE job_id = OLD.id;
END;
