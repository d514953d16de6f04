-- Soniq's SQLite schema, version 6: retention of finished webhook deliveries (see the PostgreSQL
-- migration of the same number). A delivered or failed delivery's next_attempt_at is when it
-- finished; workers delete those older than webhook_delivery_retention through this index.
-- soniq_webhook_endpoints.secrets may now hold {"$enc": "<Fernet token>"} (no column change).
CREATE INDEX soniq_webhook_deliveries_finished ON soniq_webhook_deliveries (next_attempt_at)
    WHERE status <> 'pending';
