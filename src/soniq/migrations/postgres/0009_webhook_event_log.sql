-- Soniq's PostgreSQL schema, version 9: a webhook event log, turned into deliveries lazily.

-- What the finish (and every other statement that changes a job) records for webhooks: one row
-- per statement and subscribed endpoint, the events as parallel arrays, instead of one delivery
-- row per event per endpoint. A worker turns an endpoint's rows into deliveries (and deletes
-- them) while the endpoint has fewer than a window of pending deliveries, so a receiver that
-- never answers costs a window of delivery rows, not two rows a job.
CREATE TABLE soniq_webhook_events (
    id          bigint        GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid          NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    kinds       text[]        NOT NULL,
    job_ids     text[]        NOT NULL,
    job_names   text[]        NOT NULL,
    queues      text[]        NOT NULL,
    attempts    integer[]     NOT NULL,
    errors      text[]        NOT NULL,
    ats         timestamptz[] NOT NULL
);
-- An endpoint's rows, oldest first.
CREATE INDEX soniq_webhook_events_endpoint_idx ON soniq_webhook_events (endpoint_id, id);

-- The window: an endpoint's pending deliveries, counted without reading its finished ones.
CREATE INDEX soniq_webhook_deliveries_pending_idx ON soniq_webhook_deliveries (endpoint_id)
    WHERE status = 'pending';
