-- Soniq's PostgreSQL schema, version 15: jobs that wait for other jobs (dependencies,
-- workflows, batches).

-- 'waiting': enqueued with dependencies not all finished; not in the claim indexes (they hold
-- 'queued' rows only) until released. A dedup key holds while a job waits, too.
ALTER TABLE soniq_jobs DROP CONSTRAINT soniq_jobs_status_check;
ALTER TABLE soniq_jobs ADD CONSTRAINT soniq_jobs_status_check
    CHECK (status IN ('waiting', 'queued', 'processing', 'done', 'dead_letter', 'cancelled'));
ALTER TABLE soniq_jobs DROP CONSTRAINT soniq_jobs_dedup_key_queued_check;
ALTER TABLE soniq_jobs ADD CONSTRAINT soniq_jobs_dedup_key_queued_check
    CHECK (dedup_key IS NULL OR status IN ('waiting', 'queued'));

-- A dependent job: how many of its dependency edges are not satisfied yet (NULL: it has no
-- dependencies), and what a failed dependency does to it.
ALTER TABLE soniq_jobs ADD COLUMN waiting_on integer;
ALTER TABLE soniq_jobs ADD COLUMN on_dependency_failure text
    CONSTRAINT soniq_jobs_on_dependency_failure_check
    CHECK (on_dependency_failure IN ('cancel', 'run', 'wait'));
-- A dependency: some job depends on it (set, under the row's lock, by the dependent's insert).
ALTER TABLE soniq_jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
-- The workflow or batch a job is a step of, and its step name there.
ALTER TABLE soniq_jobs ADD COLUMN workflow_id uuid;
ALTER TABLE soniq_jobs ADD COLUMN step_name text;

-- One row per edge: dependent waits for dependency. satisfied: counted off the dependent's
-- waiting_on (once: a replayed dependency never counts twice).
CREATE TABLE soniq_dependencies (
    dependency uuid    NOT NULL,
    dependent  uuid    NOT NULL REFERENCES soniq_jobs (id) ON DELETE CASCADE,
    satisfied  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (dependency, dependent)
);
CREATE INDEX soniq_dependencies_dependent_idx ON soniq_dependencies (dependent);
CREATE INDEX soniq_jobs_workflow_idx ON soniq_jobs (workflow_id, id) WHERE workflow_id IS NOT NULL;

-- Workflows and batches: a name for humans; their steps are the jobs with this workflow_id.
CREATE TABLE soniq_workflows (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    kind       text        NOT NULL DEFAULT 'workflow' CHECK (kind IN ('workflow', 'batch')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The fan-in protocol. When a job that has dependents ends (or one that has not finished is
-- deleted), this runs after the statement that ended it, in its transaction, with a new
-- snapshot per statement (READ COMMITTED): so it sees every edge an insert committed while it
-- waited for the job's row lock, and the edges it satisfies are only those not satisfied yet.
-- Each dependent's count goes down by the number of its edges satisfied here, in one UPDATE that
-- takes its row lock; at zero it is released ('queued', woken by NOTIFY). A failed dependency
-- (dead_letter, cancelled, deleted) satisfies the edges of 'run' dependents, cancels the
-- 'cancel' ones and everything that transitively cancels with them (one statement, so the
-- triggers it fires find nothing left to cancel), and leaves 'wait' ones waiting.
CREATE FUNCTION soniq_settle_dependents() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    job      soniq_jobs%ROWTYPE;
    failed   boolean;
    schema   text := current_schema();
    channel  text;
    woken    bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN job := OLD; ELSE job := NEW; END IF;
    failed := TG_OP = 'DELETE' OR job.status <> 'done';
    channel := CASE
        WHEN schema IS NULL OR schema = 'public' THEN 'soniq_jobs'
        WHEN octet_length(schema || '_soniq_jobs') <= 63 THEN schema || '_soniq_jobs'
        ELSE 'soniq_jobs_' || left(encode(sha256(convert_to('soniq:' || schema, 'UTF8')), 'hex'), 32)
    END;
    IF failed THEN
        -- Everything that cancels with this job: its waiting 'cancel' dependents, theirs, ...
        WITH RECURSIVE doomed (id) AS (
            SELECT d.dependent FROM soniq_dependencies AS d
            JOIN soniq_jobs AS w ON w.id = d.dependent
            WHERE d.dependency = job.id AND NOT d.satisfied
              AND w.status = 'waiting' AND w.on_dependency_failure = 'cancel'
            UNION
            SELECT d.dependent FROM doomed
            JOIN soniq_dependencies AS d ON d.dependency = doomed.id
            JOIN soniq_jobs AS w ON w.id = d.dependent
            WHERE NOT d.satisfied AND w.status = 'waiting' AND w.on_dependency_failure = 'cancel'
        )
        UPDATE soniq_jobs AS w
        SET status = 'cancelled', finished_at = now(), updated_at = now(), dedup_key = NULL
        FROM (SELECT DISTINCT id FROM doomed) AS c
        WHERE w.id = c.id AND w.status = 'waiting';
    END IF;
    WITH settled AS (
        UPDATE soniq_dependencies AS d SET satisfied = true
        FROM soniq_jobs AS w
        WHERE d.dependency = job.id AND NOT d.satisfied AND w.id = d.dependent
          AND w.status = 'waiting' AND (NOT failed OR w.on_dependency_failure = 'run')
        RETURNING d.dependent
    ), counted AS (
        SELECT dependent, count(*)::integer AS n FROM settled GROUP BY dependent
    ), released AS (
        UPDATE soniq_jobs AS w
        SET waiting_on = w.waiting_on - c.n,
            status = CASE WHEN w.waiting_on - c.n <= 0 THEN 'queued' ELSE 'waiting' END,
            updated_at = now()
        FROM counted AS c
        WHERE w.id = c.dependent AND w.status = 'waiting'
        RETURNING w.queue, w.status, w.scheduled_at, w.hold
    )
    SELECT count(pg_notify(channel, due.queue)) INTO woken
    FROM (SELECT DISTINCT queue FROM released
          WHERE status = 'queued' AND scheduled_at <= now() AND hold IS NULL) AS due;
    RETURN NULL;
END
$$;

CREATE TRIGGER soniq_jobs_settle_dependents
    AFTER UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_settle_dependents();

CREATE TRIGGER soniq_jobs_settle_dependents_of_deleted
    AFTER DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.has_dependents AND OLD.status NOT IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_settle_dependents();

-- Jobs cancelled before they started have no expires_at (nothing of theirs needs keeping): the
-- prune deletes them result_ttl after they were cancelled, by this index.
CREATE INDEX soniq_jobs_cancelled_idx ON soniq_jobs (finished_at)
    WHERE status = 'cancelled' AND expires_at IS NULL;
