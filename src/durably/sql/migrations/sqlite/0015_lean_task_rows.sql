-- 0015: a task row's configuration (dependencies, retry, merge, waits...) is the same for every
-- execution of a definition: it is stored once in task_configurations, under a hash of its
-- text, and an execution names it (configuration_id). Its task rows keep in
-- task_configuration only what is theirs (a fork's context_patch), else NULL. Rows written
-- before keep their full configuration, and their execution names none.

CREATE TABLE task_configurations (
    id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL
);
ALTER TABLE pipeline_executions ADD COLUMN configuration_id TEXT;
