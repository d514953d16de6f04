-- Soniq's PostgreSQL schema, version 4: webhooks (app.webhooks).

-- One row per endpoint. events NULL means every event. secrets holds the signing secrets as
-- given ([{"secret": ..., "expires_at": ...}]): they are needed to sign each request.
CREATE TABLE soniq_webhook_endpoints (
    id            uuid        PRIMARY KEY,
    url           text        NOT NULL,
    events        text[],
    secrets       jsonb       NOT NULL,
    allow_private boolean     NOT NULL DEFAULT false,
    active        boolean     NOT NULL DEFAULT true,
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per event per endpoint. Workers lease due pending rows with
-- FOR UPDATE SKIP LOCKED (lease_until), so no delivery is sent by two workers at once.
CREATE TABLE soniq_webhook_deliveries (
    id               uuid        PRIMARY KEY,
    endpoint_id      uuid        NOT NULL
                     REFERENCES soniq_webhook_endpoints (id) ON DELETE CASCADE,
    event            text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    lease_until      timestamptz,
    CONSTRAINT soniq_webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed'))
);

-- The claim: due pending rows, earliest first.
CREATE INDEX soniq_webhook_deliveries_due_idx ON soniq_webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
-- deliveries(endpoint_id) and the cascade on unregister.
CREATE INDEX soniq_webhook_deliveries_endpoint_idx
    ON soniq_webhook_deliveries (endpoint_id, created_at);
