-- Signed webhook deliveries (issue 12's notifications): the endpoints that subscribe to events,
-- and one durable delivery per (event, endpoint), retried with backoff by the leader's sweep.
-- A webhook's signing secret is sealed (AES-256-GCM, `v1:<data key id>:<base64>`) under its
-- organization's data key with the webhook's id as associated data; no plaintext is stored.
-- A delivery's body is the JSON sent, which never holds a secret.

CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,            -- wh_…
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,               -- sealed signing secret
    events          TEXT NOT NULL,               -- JSON array of event names
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,            -- whd_…
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
