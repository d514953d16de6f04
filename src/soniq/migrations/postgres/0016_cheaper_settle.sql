-- Soniq's PostgreSQL schema, version 16: the fan-in protocol of version 15, at a third of its
-- cost per ended dependency. Same protocol, same triggers' names, same semantics:
--
-- * A job with dependents that ends is noted by the WHEN of its BEFORE row trigger itself: the
--   WHEN appends the job's id to the transaction-local list (soniq.settle_done or
--   soniq.settle_failed) and sets soniq.settling, and is then false, so no trigger function is
--   called per row (a plpgsql call per ended row was half of what a fan-in cost). The calls nest
--   so that both settings are written whatever order the expression is evaluated in.
-- * The statement trigger's function runs static SQL with this schema's names written in (it
--   was EXECUTE format(...), planned again on every statement): plpgsql keeps its plans.
-- * An edge's dependent is no longer a foreign key: its check cost a lookup of the job per
--   edge inserted (a 10,000-wide fan-in: 10,000), and its cascade a DELETE per job deleted,
--   dependent or not. Edges are inserted in their dependent's transaction, after it, by Soniq
--   only; a trigger deletes a dependent's edges with it, called only for jobs that have
--   dependencies (waiting_on is set exactly for those).
-- A deleted unfinished job is still noted by the plpgsql row trigger of version 15 (rare).
DROP TRIGGER soniq_jobs_note_ended ON soniq_jobs;
CREATE TRIGGER soniq_jobs_note_ended
    BEFORE UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('done', 'dead_letter', 'cancelled')
          AND set_config('soniq.settling', 'on' || left(set_config(
                  CASE WHEN NEW.status = 'done' THEN 'soniq.settle_done'
                       ELSE 'soniq.settle_failed' END,
                  concat_ws(' ', nullif(current_setting(
                      CASE WHEN NEW.status = 'done' THEN 'soniq.settle_done'
                           ELSE 'soniq.settle_failed' END, true), ''), NEW.id),
                  true), 0), true) IS NULL)
    EXECUTE FUNCTION soniq_note_ended();

ALTER TABLE soniq_dependencies DROP CONSTRAINT soniq_dependencies_dependent_fkey;

DO $migration$
DECLARE
    -- The schema of the soniq_jobs this migration upgrades (db_schema, or the search path's).
    schema  text := (SELECT n.nspname FROM pg_class AS c
                     JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = 'soniq_jobs'::regclass);
    channel text;
BEGIN
    channel := CASE
        WHEN schema = 'public' THEN 'soniq_jobs'
        WHEN octet_length(schema || '_soniq_jobs') <= 63 THEN schema || '_soniq_jobs'
        ELSE 'soniq_jobs_' || left(encode(sha256(convert_to('soniq:' || schema, 'UTF8')), 'hex'), 32)
    END;
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.soniq_settle_dependents() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    done     uuid[] := string_to_array(nullif(current_setting('soniq.settle_done', true), ''),
                                       ' ')::uuid[];
    failed   uuid[] := string_to_array(nullif(current_setting('soniq.settle_failed', true), ''),
                                       ' ')::uuid[];
    woken    bigint;
BEGIN
    PERFORM set_config('soniq.settle_done', '', true), set_config('soniq.settle_failed', '', true),
            set_config('soniq.settling', 'off', true);
    IF failed IS NOT NULL THEN
        -- Everything that cancels with these jobs: their waiting 'cancel' dependents, theirs, ...
        WITH RECURSIVE doomed (id) AS (
            SELECT d.dependent FROM %1$I.soniq_dependencies AS d
            JOIN %1$I.soniq_jobs AS w ON w.id = d.dependent
            WHERE d.dependency = ANY (failed) AND NOT d.satisfied
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
        WHERE w.id = c.id AND w.status = 'waiting';
    END IF;
    WITH settled AS (
        UPDATE %1$I.soniq_dependencies AS d SET satisfied = true
        FROM %1$I.soniq_jobs AS w
        WHERE d.dependency = ANY (coalesce(done, '{}') || coalesce(failed, '{}'))
          AND NOT d.satisfied AND w.id = d.dependent AND w.status = 'waiting'
          AND (d.dependency = ANY (coalesce(done, '{}')) OR w.on_dependency_failure = 'run')
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
    SELECT count(pg_notify(%2$L, due.queue)) INTO woken
    FROM (SELECT DISTINCT queue FROM released
          WHERE status = 'queued' AND scheduled_at <= now() AND hold IS NULL) AS due;
    RETURN NULL;
END
$body$
$function$, schema, channel);
    EXECUTE format($function$
CREATE FUNCTION %1$I.soniq_forget_edges() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM %1$I.soniq_dependencies WHERE dependent = OLD.id;
    RETURN NULL;
END
$body$
$function$, schema);
END
$migration$;

CREATE TRIGGER soniq_jobs_forget_edges
    AFTER DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.waiting_on IS NOT NULL)
    EXECUTE FUNCTION soniq_forget_edges();
