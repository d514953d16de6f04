-- Soniq's PostgreSQL schema, version 7: a cheaper webhook outbox (a busy worker writes two rows a
-- job per endpoint).

-- The payload is only ever sent as it was written: text, not parsed into jsonb.
ALTER TABLE soniq_webhook_deliveries ALTER COLUMN payload TYPE text;

-- No foreign key to the endpoint: its check locked the endpoint row once per inserted delivery.
-- The insert joins the endpoints it fans out to instead, unregistering deletes the endpoint's
-- deliveries in the same statement, and a delivery whose endpoint vanished between the two is
-- finished as failed when a worker picks it up.
ALTER TABLE soniq_webhook_deliveries DROP CONSTRAINT soniq_webhook_deliveries_endpoint_id_fkey;
