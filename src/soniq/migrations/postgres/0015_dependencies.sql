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
-- deleted), a BEFORE row trigger notes its id in the transaction (a transaction-local setting;
-- BEFORE, so the note exists when the statement's AFTER trigger is queued), and a statement
-- trigger -- gated by a WHEN on that note, so every other statement pays one setting
-- lookup -- settles all the jobs the statement ended at once, after it, in its transaction.
-- Being a function, each of its statements takes a new snapshot (READ COMMITTED): it sees every
-- edge an insert committed while the ending statement waited for a job's row lock, and it
-- satisfies only edges not satisfied yet. Each dependent's count goes down by the number of its
-- edges satisfied here in ONE grouped UPDATE that takes its row lock (a fan-in row is updated
-- once per statement, not once per dependency: many versions of one row in one transaction make
-- each further update slower); at zero it is released ('queued', woken by NOTIFY). A failed
-- dependency (dead_letter, cancelled, deleted) satisfies the edges of its 'run' dependents,
-- cancels the 'cancel' ones and everything that transitively cancels with them (one statement:
-- the triggers it fires find nothing left to cancel), and leaves 'wait' ones waiting. Names are
-- qualified with the trigger's own schema (db_schema), and so is the NOTIFY channel.
CREATE FUNCTION soniq_note_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    list text := CASE WHEN TG_OP = 'UPDATE' AND NEW.status = 'done'
                      THEN 'soniq.settle_done' ELSE 'soniq.settle_failed' END;
BEGIN
    PERFORM set_config(list, concat_ws(' ', nullif(current_setting(list, true), ''),
                                       CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END),
                       true),
            set_config('soniq.settling', 'on', true);
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION soniq_settle_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    done     uuid[] := string_to_array(nullif(current_setting('soniq.settle_done', true), ''),
                                       ' ')::uuid[];
    failed   uuid[] := string_to_array(nullif(current_setting('soniq.settle_failed', true), ''),
                                       ' ')::uuid[];
    schema   text := TG_TABLE_SCHEMA;
    channel  text;
BEGIN
    PERFORM set_config('soniq.settle_done', '', true), set_config('soniq.settle_failed', '', true),
            set_config('soniq.settling', 'off', true);
    channel := CASE
        WHEN schema = 'public' THEN 'soniq_jobs'
        WHEN octet_length(schema || '_soniq_jobs') <= 63 THEN schema || '_soniq_jobs'
        ELSE 'soniq_jobs_' || left(encode(sha256(convert_to('soniq:' || schema, 'UTF8')), 'hex'), 32)
    END;
    IF failed IS NOT NULL THEN
        -- Everything that cancels with these jobs: their waiting 'cancel' dependents, theirs, ...
        EXECUTE format($sql$
            WITH RECURSIVE doomed (id) AS (
                SELECT d.dependent FROM %1$I.soniq_dependencies AS d
                JOIN %1$I.soniq_jobs AS w ON w.id = d.dependent
                WHERE d.dependency = ANY ($1) AND NOT d.satisfied
                  AND w.status = 'waiting' AND w.on_dependency_failure = 'cancel'
                UNION
                SELECT d.dependent FROM doomed
                JOIN %1$I.soniq_dependencies AS d ON d.dependency = doomed.id
                JOIN %1$I.soniq_jobs AS w ON w.id = d.dependent
                WHERE NOT d.satisfied AND w.status = 'waiting'
                  AND w.on_dependency_failure = 'cancel'
            )
            UPDATE %1$I.soniq_jobs AS w
            SET status = 'cancelled', finished_at = now(), updated_at = now(), dedup_key = NULL
            FROM (SELECT DISTINCT id FROM doomed) AS c
            WHERE w.id = c.id AND w.status = 'waiting'
        $sql$, schema) USING failed;
    END IF;
    EXECUTE format($sql$
        WITH settled AS (
            UPDATE %1$I.soniq_dependencies AS d SET satisfied = true
            FROM %1$I.soniq_jobs AS w
            WHERE d.dependency = ANY (coalesce($1, '{}') || coalesce($2, '{}'))
              AND NOT d.satisfied AND w.id = d.dependent AND w.status = 'waiting'
              AND (d.dependency = ANY (coalesce($1, '{}')) OR w.on_dependency_failure = 'run')
            RETURNING d.dependent
        ), counted AS (
            SELECT dependent, count(*)::integer AS n FROM settled GROUP BY dependent
        ), released AS (
            UPDATE %1$I.soniq_jobs AS w
            SET waiting_on = w.waiting_on - c.n,
                status = CASE WHEN w.waiting_on - c.n <= 0 THEN 'queued' ELSE 'waiting' END,
                updated_at = now()
            FROM counted AS c
            WHERE w.id = c.dependent AND w.status = 'waiting'
            RETURNING w.queue, w.status, w.scheduled_at, w.hold
        )
        SELECT count(pg_notify($3, due.queue))
        FROM (SELECT DISTINCT queue FROM released
              WHERE status = 'queued' AND scheduled_at <= now() AND hold IS NULL) AS due
    $sql$, schema) USING done, failed, channel;
    RETURN NULL;
END
$$;

CREATE TRIGGER soniq_jobs_note_ended
    BEFORE UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_note_ended();

CREATE TRIGGER soniq_jobs_note_deleted
    BEFORE DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.has_dependents AND OLD.status NOT IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_note_ended();

CREATE TRIGGER soniq_jobs_settle_dependents
    AFTER UPDATE OR DELETE ON soniq_jobs
    FOR EACH STATEMENT
    WHEN (current_setting('soniq.settling', true) = 'on')
    EXECUTE FUNCTION soniq_settle_dependents();

-- Jobs cancelled before they started have no expires_at (nothing of theirs needs keeping): the
-- prune deletes them result_ttl after they were cancelled, by this index.
CREATE INDEX soniq_jobs_cancelled_idx ON soniq_jobs (finished_at)
    WHERE status = 'cancelled' AND expires_at IS NULL;
