-- 0004: durable waits and events. A waiting task stores when it wakes (or when its event
-- wait times out) and the event it waits for. waited records that its wait was satisfied
-- (a retry does not wait again), received holds event payloads for its input (codec JSON).

ALTER TABLE task_executions ADD COLUMN wake_at TIMESTAMPTZ;
ALTER TABLE task_executions ADD COLUMN wait_event TEXT;
ALTER TABLE task_executions ADD COLUMN waited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN received TEXT;
CREATE INDEX task_executions_waiting ON task_executions (wake_at) WHERE status = 'waiting';

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
