-- 0005: retention and schedules.
-- Indexes that make pruning cheap: finished executions found by (status, completed_at), and
-- every column that references a pruned row indexed, so the foreign-key checks and cascades a
-- delete runs are index lookups instead of a table scan per deleted row.
-- schedules holds each schedule's cursor (the time up to which its slots are handled), the
-- slots it missed and its last run: workers share it, and it survives their restarts.

CREATE INDEX pipeline_executions_finished ON pipeline_executions (status, completed_at);
CREATE INDEX pipeline_executions_context ON pipeline_executions (context_id);
CREATE INDEX pipeline_executions_final_context ON pipeline_executions (final_context_id);
CREATE INDEX task_execution_metadata_context ON task_execution_metadata (context_id);
CREATE INDEX task_execution_metadata_task ON task_execution_metadata (task_execution_id);
CREATE INDEX task_attempts_task ON task_attempts (task_execution_id);
CREATE INDEX saga_executions_finished ON saga_executions (status, updated_at);
CREATE INDEX saga_executions_context ON saga_executions (context_id);

CREATE TABLE schedules (
    workflow_name TEXT NOT NULL,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    checked_at TEXT NOT NULL,
    last_slot TEXT,
    last_execution_id TEXT,
    missed INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (workflow_name, name)
);
