-- Soniq's PostgreSQL schema, version 10: the event log, a capability of the core.

-- What the statements that change jobs (finish, heartbeat, cancel, rescue) record while someone
-- reads it (soniq/backends/postgres/events.py): one row per statement, committed with the change
-- it describes, one element per event in parallel arrays. Not about webhooks: the webhook store
-- reads this log and keeps its own (soniq_webhook_events, per endpoint). Events that are not about
-- a job or an attempt have NULL there.
CREATE TABLE soniq_events (
    id         bigint        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz   NOT NULL DEFAULT now(),
    kinds      text[]        NOT NULL,  -- what happened: 'job.done', ...
    job_ids    uuid[]        NOT NULL,  -- the job it happened to (NULL: not about a job)
    attempts   integer[]     NOT NULL,  -- the attempt (NULL: not about an attempt)
    ats        timestamptz[] NOT NULL,  -- when it happened
    -- The attempt's job.started, recorded in the same element (NULL: not): a finish records an
    -- attempt's start and outcome in one element.
    started_ats timestamptz[] NOT NULL,
    payloads   json[]        NOT NULL   -- the rest, one JSON object per event
) WITH (toast_tuple_target = 8160);  -- a statement's row stays inline, uncompressed, when it fits

-- Who reads the log, for the statements that record events whichever process runs them (cancel,
-- rescue: rare, and the cancel may come from a process that reads nothing, e.g. the dashboard):
-- they record while a row is here. A reader adds its row when it has something to read for (the
-- webhook store: while an endpoint exists) and removes it when it has not.
CREATE TABLE soniq_event_readers (
    name  text        PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
INSERT INTO soniq_event_readers (name)
SELECT 'webhooks' WHERE EXISTS (SELECT 1 FROM soniq_webhook_endpoints);
