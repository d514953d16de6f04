-- Soniq's PostgreSQL schema, version 20: the saved steps of durable functions (@app.durable).

-- One row per step a durable function reached: its key ("fetch_order#1", "sleep#1", a
-- ctx.patched marker), its position in call order, the function's name and a digest of its
-- arguments (the replay checks both), its status ('done', 'error', 'sleep' or 'marker') and its
-- value (a result encoded like a job result -- encrypted for encrypt=True functions --, an error,
-- or a sleep's wake time), and the lease of the attempt that wrote it. Rows are written only
-- while that attempt holds the job's lease, and go with their job (ON DELETE CASCADE): plain
-- jobs have no rows, so their deletes look up an empty index.
CREATE TABLE soniq_steps (
    job_id uuid NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    step_key text NOT NULL,
    position integer NOT NULL,
    function text NOT NULL,
    digest text NOT NULL,
    status text NOT NULL CHECK (status IN ('done', 'error', 'sleep', 'marker')),
    value text,
    lease_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step_key)
);
