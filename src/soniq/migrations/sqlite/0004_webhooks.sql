-- Soniq's SQLite schema, version 4: webhooks (app.webhooks). Timestamps are TEXT in the
-- fixed-width UTC form of version 1; events and secrets are JSON text.

-- One row per endpoint. secrets holds the signing secrets as given (they are needed to sign).
CREATE TABLE soniq_webhook_endpoints (
    id            TEXT    PRIMARY KEY NOT NULL,
    url           TEXT    NOT NULL,
    events        TEXT,
    secrets       TEXT    NOT NULL,
    allow_private INTEGER NOT NULL DEFAULT 0,
    active        INTEGER NOT NULL DEFAULT 1,
    description   TEXT,
    created_at    TEXT    NOT NULL
);

-- The outbox: one row per event per endpoint; a worker leases due pending rows to send them.
CREATE TABLE soniq_webhook_deliveries (
    id               TEXT    PRIMARY KEY NOT NULL,
    endpoint_id      TEXT    NOT NULL REFERENCES soniq_webhook_endpoints (id) ON DELETE CASCADE,
    event            TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    delivered_at     TEXT,
    lease_until      TEXT
);

-- The claim: due pending rows, earliest first.
CREATE INDEX soniq_webhook_deliveries_due ON soniq_webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX soniq_webhook_deliveries_endpoint ON soniq_webhook_deliveries (endpoint_id, created_at);
