-- Soniq's PostgreSQL schema, version 18: jobs someone waits for (app.wait_for_job).

-- Set by a waiter (never cleared): this job's end is pushed by NOTIFY. A constant default, so
-- adding the column rewrites nothing.
ALTER TABLE soniq_jobs ADD COLUMN awaited boolean NOT NULL DEFAULT false;

-- The push. When an awaited job ends (done, dead_letter, cancelled: by a finish, a cancel, a
-- rescue, a dependency's cancel) or is deleted before it ended, a BEFORE row trigger -- gated by
-- a WHEN on the flag, so a job nobody waits for costs one boolean test -- notes its id in the
-- transaction (a transaction-local setting, as soniq_note_ended does), and a statement trigger,
-- gated by a WHEN on that note (every other statement pays one setting lookup), sends the ids
-- noted so far on the awaited channel, 100 per payload (3,700 bytes, well within NOTIFY's 8,000)
-- and clears the note. NOTIFY is delivered at commit: a waiter woken reads the ended row. The
-- channel is the trigger's own schema's (db_schema), like soniq_settle_dependents's.
CREATE FUNCTION soniq_note_awaited() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('soniq.awaited_ended',
                       concat_ws(' ', nullif(current_setting('soniq.awaited_ended', true), ''),
                                 CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END),
                       true);
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION soniq_tell_waiters() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids     text[] := string_to_array(current_setting('soniq.awaited_ended', true), ' ');
    schema  text := TG_TABLE_SCHEMA;
    channel text;
    i       integer := 1;
BEGIN
    PERFORM set_config('soniq.awaited_ended', '', true);
    channel := CASE
        WHEN schema = 'public' THEN 'soniq_awaited'
        WHEN octet_length(schema || '_soniq_awaited') <= 63 THEN schema || '_soniq_awaited'
        ELSE 'soniq_awaited_' || left(encode(sha256(convert_to('soniq:' || schema, 'UTF8')), 'hex'), 32)
    END;
    WHILE i <= coalesce(array_length(ids, 1), 0) LOOP
        PERFORM pg_notify(channel, array_to_string(ids[i:i + 99], ' '));
        i := i + 100;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER soniq_jobs_note_awaited
    BEFORE UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (NEW.awaited AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_note_awaited();

CREATE TRIGGER soniq_jobs_note_awaited_deleted
    BEFORE DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.awaited AND OLD.status NOT IN ('done', 'dead_letter', 'cancelled'))
    EXECUTE FUNCTION soniq_note_awaited();

CREATE TRIGGER soniq_jobs_tell_waiters
    AFTER UPDATE OR DELETE ON soniq_jobs
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('soniq.awaited_ended', true), '') <> '')
    EXECUTE FUNCTION soniq_tell_waiters();
