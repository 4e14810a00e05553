-- 0002: every attempt of a task is kept (task_attempts), and executions may carry an idempotency
-- key, unique per workflow name.

ALTER TABLE pipeline_executions ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX pipeline_executions_key ON pipeline_executions (pipeline_name, idempotency_key);

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
    logs TEXT
);
CREATE INDEX task_attempts_execution ON task_attempts (pipeline_execution_id, finished_at);
