-- 0003: saga delivery. A request is written to saga_outbox in the transaction that pauses its
-- step, and a relay publishes it (retrying while the broker is down), and a participant's replies
-- are kept in saga_inbox under the request's idempotency key.
CREATE TABLE saga_outbox (
    id TEXT PRIMARY KEY,
    saga_execution_id TEXT NOT NULL REFERENCES saga_executions (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    body TEXT NOT NULL,
    headers TEXT NOT NULL,
    fallback_reply_to TEXT,
    creator TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    lease_until TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX saga_outbox_due ON saga_outbox (next_attempt_at);
CREATE INDEX saga_outbox_execution ON saga_outbox (saga_execution_id);

CREATE TABLE saga_inbox (
    target TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (target, idempotency_key)
);
