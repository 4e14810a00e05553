-- 0015: a task row's configuration (dependencies, retry, merge, waits...) and trigger rule are
-- the same for every execution of a definition: they are stored once in task_configurations,
-- under a hash of their text, and an execution names it (configuration_id). Its task rows
-- keep in task_configuration only what is theirs (a fork's context_patch), else NULL, and
-- trigger_rules NULL. Rows written before keep both, and their execution names none.

CREATE TABLE task_configurations (
    id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    value JSONB NOT NULL,
    trigger_rules JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE pipeline_executions ADD COLUMN configuration_id TEXT;

-- An output's link is found by its execution and task name, never by its own id: that pair is
-- its primary key, and the index on id goes. Its updated_at is NULL until the link is
-- replaced (a mapped task's retry, a rerun): rows written before keep theirs.
ALTER TABLE task_execution_metadata DROP CONSTRAINT task_execution_metadata_pkey;
ALTER TABLE task_execution_metadata
    DROP CONSTRAINT task_execution_metadata_pipeline_execution_id_task_name_key;
ALTER TABLE task_execution_metadata ADD PRIMARY KEY (pipeline_execution_id, task_name);
ALTER TABLE task_execution_metadata ALTER COLUMN updated_at DROP NOT NULL;

-- A workflow's context row is never updated once written, so its updated_at, the same as its
-- created_at, is left NULL (a saga's row is updated, and says when). Rows written before keep
-- theirs.
ALTER TABLE contexts ALTER COLUMN updated_at DROP NOT NULL;
