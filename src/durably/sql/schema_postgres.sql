-- The durably schema on PostgreSQL: ids are uuid, times timestamptz, context and saga state
-- JSON text (kept as written), task rules and configuration jsonb.
-- Keep in step with migrations/postgres/ (a test applies every migration and compares) and
-- with schema_sqlite.sql (same tables, columns, constraints and indexes).

CREATE TABLE contexts (
    id UUID PRIMARY KEY,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    -- 0015: NULL while never updated (a workflow's rows never are, a saga's are)
    updated_at TIMESTAMPTZ,
    -- 0014: NULL, value is the full text, else what changed since this row (deltas.py)
    base_id UUID
);

CREATE TABLE pipeline_executions (
    id UUID PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    pipeline_version TEXT NOT NULL,
    status TEXT NOT NULL,
    context_id UUID NOT NULL REFERENCES contexts (id),
    final_context_id UUID REFERENCES contexts (id),
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    error_details TEXT,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    last_recovery_at TIMESTAMPTZ,
    claimed_by TEXT,
    heartbeat_at TIMESTAMPTZ,
    parent_execution_id UUID,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    idempotency_key TEXT,
    parent_task TEXT,
    pipeline_shape TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT,
    admitted INTEGER NOT NULL DEFAULT 0,
    trace_context TEXT,
    -- 0015: its tasks' configurations (task_configurations), NULL before: in their rows
    configuration_id TEXT
);
CREATE INDEX pipeline_executions_status ON pipeline_executions (status, created_at, id);
CREATE INDEX pipeline_executions_created ON pipeline_executions (created_at, id);
CREATE INDEX pipeline_executions_name ON pipeline_executions (pipeline_name, created_at, id, status);
CREATE INDEX pipeline_executions_idempotency_key ON pipeline_executions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX pipeline_executions_key ON pipeline_executions (pipeline_name, idempotency_key);

CREATE TABLE task_executions (
    id UUID PRIMARY KEY,
    pipeline_execution_id UUID NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    task_name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    error_details TEXT,
    trigger_rules JSONB,
    task_configuration JSONB,
    retry_at TIMESTAMPTZ,
    last_error TEXT,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    last_recovery_at TIMESTAMPTZ,
    claimed_by TEXT,
    heartbeat_at TIMESTAMPTZ,
    compensation_status TEXT,
    compensation_error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    wake_at TIMESTAMPTZ,
    wait_event TEXT,
    waited INTEGER NOT NULL DEFAULT 0,
    received TEXT,
    map_parent TEXT,
    map_index INTEGER,
    map_total INTEGER,
    map_done INTEGER NOT NULL DEFAULT 0,
    map_failed INTEGER NOT NULL DEFAULT 0,
    code_version TEXT,
    concurrency_key TEXT,
    rate_key TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    flow_limited INTEGER NOT NULL DEFAULT 0,
    pipeline_key TEXT,
    logs TEXT,
    UNIQUE (pipeline_execution_id, task_name)
);
CREATE INDEX task_executions_waiting ON task_executions (wake_at) WHERE status = 'waiting';
CREATE INDEX task_executions_instances ON task_executions (pipeline_execution_id, map_parent, map_index)
    WHERE map_parent IS NOT NULL;

-- An output's link (0012: no foreign keys to its task and context, checked on every insert:
-- outputs are deleted before their tasks, and prune_contexts keeps a context still linked).
-- 0015: keyed by what finds it, its execution and task name.
CREATE TABLE task_execution_metadata (
    id UUID NOT NULL,
    task_execution_id UUID NOT NULL,
    pipeline_execution_id UUID NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    task_name TEXT NOT NULL,
    context_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ,  -- 0015: NULL until the link is replaced
    PRIMARY KEY (pipeline_execution_id, task_name)
);

CREATE TABLE task_attempts (
    id UUID PRIMARY KEY,
    task_execution_id UUID NOT NULL REFERENCES task_executions (id) ON DELETE CASCADE,
    pipeline_execution_id UUID NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    task_name TEXT NOT NULL,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ NOT NULL,
    worker TEXT,
    error TEXT,
    logs TEXT,
    code_version TEXT
);
CREATE INDEX task_attempts_execution ON task_attempts (pipeline_execution_id, finished_at);

CREATE TABLE execution_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pipeline_execution_id UUID NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    idempotency_key TEXT,
    payload TEXT NOT NULL,
    consumed_by UUID,
    created_at TIMESTAMPTZ NOT NULL,
    consumed_at TIMESTAMPTZ,
    UNIQUE (pipeline_execution_id, idempotency_key)
);
CREATE INDEX execution_events_pending ON execution_events (pipeline_execution_id, name, seq)
    WHERE consumed_by IS NULL;

CREATE TABLE saga_executions (
    id UUID PRIMARY KEY,
    saga_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    context_id UUID NOT NULL REFERENCES contexts (id),
    state TEXT NOT NULL,
    error_details TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX saga_executions_status ON saga_executions (status, created_at, id);
CREATE INDEX saga_executions_created ON saga_executions (created_at, id);
CREATE INDEX saga_executions_name ON saga_executions (saga_name, created_at, id, status);

CREATE TABLE saga_replies (
    saga_execution_id UUID NOT NULL REFERENCES saga_executions (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (saga_execution_id, idempotency_key)
);

-- Saga delivery. A request is written to saga_outbox in the transaction that pauses its
-- step, and a relay publishes it (retrying while the broker is down), and a participant's replies
-- are kept in saga_inbox under the request's idempotency key.
CREATE TABLE saga_outbox (
    id UUID PRIMARY KEY,
    saga_execution_id UUID NOT NULL REFERENCES saga_executions (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    body TEXT NOT NULL,
    headers TEXT NOT NULL,
    fallback_reply_to TEXT,
    creator TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX saga_outbox_due ON saga_outbox (next_attempt_at);
CREATE INDEX saga_outbox_execution ON saga_outbox (saga_execution_id);

CREATE TABLE saga_inbox (
    target TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (target, idempotency_key)
);

-- Retention and schedules (0005): the indexes pruning relies on, and each schedule's state.
CREATE INDEX pipeline_executions_finished ON pipeline_executions (status, completed_at);
CREATE INDEX pipeline_executions_context ON pipeline_executions (context_id);
CREATE INDEX pipeline_executions_final_context ON pipeline_executions (final_context_id);
CREATE INDEX task_execution_metadata_context ON task_execution_metadata (context_id);
CREATE INDEX task_attempts_task ON task_attempts (task_execution_id);
CREATE INDEX saga_executions_finished ON saga_executions (status, updated_at);
CREATE INDEX saga_executions_context ON saga_executions (context_id);

CREATE TABLE schedules (
    workflow_name TEXT NOT NULL,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL,
    last_slot TIMESTAMPTZ,
    last_execution_id UUID,
    missed INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_name, name)
);

-- Sub-workflows (0007): a child names its parent's task.
CREATE INDEX pipeline_executions_children ON pipeline_executions (parent_execution_id)
    WHERE parent_task IS NOT NULL;

-- Deploy-safe versions (0008): which definitions each live worker serves.
CREATE TABLE worker_versions (
    worker_id TEXT PRIMARY KEY,
    versions TEXT NOT NULL,
    lease DOUBLE PRECISION NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

-- Flow control (0009): ready tasks in claim order (but those awaiting a retry, by their
-- retry time: 0016), counting what runs under a key, and the rate limits' token buckets.
CREATE INDEX task_executions_claim
    ON task_executions (priority DESC, created_at, position, pipeline_key)
    WHERE status = 'ready' AND retry_at IS NULL;
CREATE INDEX task_executions_limited_claim
    ON task_executions (priority DESC, created_at, position)
    WHERE status = 'ready' AND flow_limited = 1 AND retry_at IS NULL;
CREATE INDEX task_executions_retrying ON task_executions (retry_at)
    WHERE status = 'ready' AND retry_at IS NOT NULL;
CREATE INDEX task_executions_limited ON task_executions (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX pipeline_executions_limited ON pipeline_executions (concurrency_key)
    WHERE status = 'running' AND admitted = 1;

CREATE TABLE rate_buckets (
    name TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    counted_at DOUBLE PRECISION NOT NULL
);

-- Task configurations (0015): each definition's, once, by a hash of their text (JSON objects of
-- task name to configuration, and to trigger rule). A task row's task_configuration holds
-- only its own part, its trigger_rules NULL.
CREATE TABLE task_configurations (
    id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    value JSONB NOT NULL,
    trigger_rules JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Inbox retention (0017): a prune deletes the replies recorded before its cutoff, oldest first.
CREATE INDEX saga_inbox_created ON saga_inbox (created_at);
