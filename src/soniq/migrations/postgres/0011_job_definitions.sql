-- Soniq's PostgreSQL schema, version 11: job definitions, written by every worker at start.

-- One row per job name and distinct definition (digest of everything but the name), so the
-- versions of a deploy stay side by side. first_seen_at is set when the row is inserted and never
-- changed: the current definition of a name is its latest first_seen_at, so an old worker that
-- restarts (re-writing an older digest: only its last_seen_at moves) does not bring it back.
-- Nothing here is checked by the database: readers skip a row that is not a definition.
CREATE TABLE soniq_job_definitions (
    name          text             NOT NULL,
    digest        text             NOT NULL,
    queue         text             NOT NULL,
    priority      integer          NOT NULL,
    max_attempts  integer          NOT NULL,
    timeout       double precision,            -- NULL: no timeout
    encrypt       boolean          NOT NULL DEFAULT false,
    options       jsonb            NOT NULL DEFAULT '{}',  -- limits, uniqueness rules, ...
    first_seen_at timestamptz      NOT NULL DEFAULT now(),
    last_seen_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (name, digest)
);

-- The job names each worker registered (kept when the heartbeat re-creates its row).
ALTER TABLE soniq_workers ADD COLUMN job_names text[] NOT NULL DEFAULT '{}';
