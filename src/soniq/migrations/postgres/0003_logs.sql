-- Soniq's PostgreSQL schema, version 3: job logs (app.logs, capture_job_logs).

-- One row per log record emitted inside a job (through ctx.logger or any stdlib logger), written
-- in batches by the worker's log flusher. The foreign key removes a job's logs with the job
-- (delete_job, prune, dead-letter delete and purge); the (job_id, id) index serves that cascade
-- and for_job(); the (created_at) index serves search by time.
CREATE TABLE soniq_job_logs (
    id         bigserial   PRIMARY KEY,
    job_id     uuid        NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    job_name   text        NOT NULL,
    queue      text        NOT NULL,
    attempt    integer     NOT NULL,
    level      text        NOT NULL,
    levelno    integer     NOT NULL,
    logger     text        NOT NULL,
    message    text        NOT NULL,
    exception  text,
    created_at timestamptz NOT NULL
);
CREATE INDEX soniq_job_logs_job_idx ON soniq_job_logs (job_id, id);
CREATE INDEX soniq_job_logs_created_at_idx ON soniq_job_logs (created_at);
