-- Soniq's SQLite schema, version 3: job logs (app.logs, capture_job_logs).
-- Timestamps are TEXT in the fixed-width UTC form of version 1.

-- One row per log record emitted inside a job, written in batches by the worker's log flusher.
-- The foreign key (foreign_keys is ON for every connection) removes a job's logs with the job.
CREATE TABLE soniq_job_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    job_name   TEXT    NOT NULL,
    queue      TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    level      TEXT    NOT NULL,
    levelno    INTEGER NOT NULL,
    logger     TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    exception  TEXT,
    created_at TEXT    NOT NULL
);
CREATE INDEX soniq_job_logs_job ON soniq_job_logs (job_id, id);
CREATE INDEX soniq_job_logs_created_at ON soniq_job_logs (created_at);
