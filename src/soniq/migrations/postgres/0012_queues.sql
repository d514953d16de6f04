-- Soniq's PostgreSQL schema, version 12: queue settings and the audit log.

-- A queue's settings, stored once something is set on it (no row: not paused, no limits). Every
-- claim excludes the queues paused here (read once per claim); a change is announced on the
-- soniq_queues channel so workers reload their view within a second.
CREATE TABLE soniq_queues (
    name              text        PRIMARY KEY,
    paused            boolean     NOT NULL DEFAULT false,
    concurrency_limit integer     CHECK (concurrency_limit > 0),
    rate_limit        text        CHECK (rate_limit ~ '^[1-9][0-9]*/[smh]$'),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Every change made through the API, the CLI or the dashboard (and refused dashboard writes),
-- from any process. Newest first is id order.
CREATE TABLE soniq_audit (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,
    client  text,
    action  text        NOT NULL,
    targets text[]      NOT NULL DEFAULT '{}',
    outcome text        NOT NULL,
    detail  text
);
