-- Soniq's PostgreSQL schema, version 6: retention of finished webhook deliveries.

-- A delivered or failed delivery's next_attempt_at is when it finished. Workers delete those older
-- than webhook_delivery_retention in batches; this index finds them without scanning the pending
-- ones (which the claim's index covers).
CREATE INDEX soniq_webhook_deliveries_finished_idx ON soniq_webhook_deliveries (next_attempt_at)
    WHERE status <> 'pending';

-- No column changes: with secret_keys configured, soniq_webhook_endpoints.secrets holds the
-- secrets list encrypted, {"$enc": "<Fernet token>"} (still a JSON object); rows written before
-- keys were configured stay readable and are re-encrypted by the next worker that loads them.
