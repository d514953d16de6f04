-- Soniq's PostgreSQL schema, version 9: a webhook event log, turned into deliveries lazily.

-- What the finish (and every other statement that changes a job) records for webhooks: one row
-- per statement and subscribed endpoint, the job attempts as parallel arrays, instead of one
-- delivery row per event per endpoint. A worker turns an endpoint's rows into deliveries (and deletes
-- them) while the endpoint has fewer than a window of pending deliveries, so a receiver that
-- never answers costs a window of delivery rows, not two rows a job.
CREATE TABLE soniq_webhook_events (
    id          bigint        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid          NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    -- One element per job attempt: job.started at started_ats[i] (NULL: none), and the event
    -- kinds[i] (NULL: none) at ats[i] with errors[i].
    job_ids     uuid[]        NOT NULL,
    job_names   text[]        NOT NULL,
    queues      text[]        NOT NULL,
    attempts    integer[]     NOT NULL,
    started_ats timestamptz[] NOT NULL,
    kinds       text[]        NOT NULL,
    errors      text[]        NOT NULL,
    ats         timestamptz[] NOT NULL
) WITH (toast_tuple_target = 8160);  -- a finished batch's row stays inline, uncompressed
-- An endpoint's rows, oldest first.
CREATE INDEX soniq_webhook_events_endpoint_idx ON soniq_webhook_events (endpoint_id, id);

-- The window: an endpoint's pending deliveries, counted without reading its finished ones.
CREATE INDEX soniq_webhook_deliveries_pending_idx ON soniq_webhook_deliveries (endpoint_id)
    WHERE status = 'pending';
