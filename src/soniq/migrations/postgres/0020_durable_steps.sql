-- Soniq's PostgreSQL schema, version 20: the saved steps of durable functions (@app.durable).

-- One row per step a durable function reached: its key ("fetch_order#1", "sleep#1", a
-- ctx.patched marker), its position in call order, the function's name and a digest of its
-- arguments (the replay checks both), its status ('done', 'error', 'sleep' or 'marker') and its
-- value (a result encoded like a job result -- encrypted for encrypt=True functions --, an error,
-- or a sleep's wake time), and the lease of the attempt that wrote it. Rows are written only
-- while that attempt holds the job's lease.
CREATE TABLE soniq_steps (
    job_id uuid NOT NULL,
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

-- Steps go with their job. Not a foreign key: its cascade is a lookup per job deleted, steps or
-- not (it doubled the cost of pruning plain jobs). The first step write of a job sets has_steps
-- (nullable without a default: adding it rewrites no row), and a trigger called only for jobs
-- that have it deletes their steps with them, as soniq_jobs_forget_edges does for edges (0016).
ALTER TABLE soniq_jobs ADD COLUMN has_steps boolean;

DO $migration$
DECLARE
    -- The schema of the soniq_jobs this migration upgrades (db_schema, or the search path's).
    schema text := (SELECT n.nspname FROM pg_class AS c
                    JOIN pg_namespace AS n ON n.oid = c.relnamespace
                    WHERE c.oid = 'soniq_jobs'::regclass);
BEGIN
    EXECUTE format($function$
CREATE FUNCTION %1$I.soniq_forget_steps() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM %1$I.soniq_steps WHERE job_id = OLD.id;
    RETURN NULL;
END
$body$
$function$, schema);
END
$migration$;

CREATE TRIGGER soniq_jobs_forget_steps
    AFTER DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.has_steps)
    EXECUTE FUNCTION soniq_forget_steps();
