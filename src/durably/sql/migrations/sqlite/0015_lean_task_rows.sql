-- 0015: a task row's configuration (dependencies, retry, merge, waits...) and trigger rule are
-- the same for every execution of a definition: they are stored once in task_configurations,
-- under a hash of their text, and an execution names it (configuration_id). Its task rows
-- keep in task_configuration only what is theirs (a fork's context_patch), else NULL, and
-- trigger_rules NULL. Rows written before keep both, and their execution names none.

CREATE TABLE task_configurations (
    id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    value TEXT NOT NULL,
    trigger_rules TEXT NOT NULL,
    created_at TEXT NOT NULL
);
ALTER TABLE pipeline_executions ADD COLUMN configuration_id TEXT;

-- An output's link is found by its execution and task name, never by its own id: that pair is
-- its primary key, and the index on id goes. Its updated_at is NULL until the link is
-- replaced (a mapped task's retry, a rerun): rows written before keep it where it differs
-- from their created_at. Not a WITHOUT ROWID table: clustered on the pair, a random execution
-- id, each insert would land on a random page, and the context index would hold the pair
-- instead of a rowid (measured: 8% more bytes than this). SQLite changes a key by rebuilding
-- the table.
CREATE TABLE task_execution_metadata_keyed (
    id TEXT NOT NULL,
    task_execution_id TEXT NOT NULL,
    pipeline_execution_id TEXT NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    task_name TEXT NOT NULL,
    context_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    PRIMARY KEY (pipeline_execution_id, task_name)
);
INSERT INTO task_execution_metadata_keyed (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at, updated_at
)
SELECT id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at,
       CASE WHEN updated_at <> created_at THEN updated_at END
FROM task_execution_metadata;
DROP TABLE task_execution_metadata;
ALTER TABLE task_execution_metadata_keyed RENAME TO task_execution_metadata;
CREATE INDEX task_execution_metadata_context ON task_execution_metadata (context_id);

-- A workflow's context row is never updated once written, so its updated_at, the same text as
-- its created_at, is left NULL (a saga's row is updated, and says when). SQLite drops a NOT
-- NULL by rebuilding the table or, as here, the column: the rows written before keep an
-- updated_at only where it differs from their created_at.
ALTER TABLE contexts ADD COLUMN updated_at_0015 TEXT;
UPDATE contexts SET updated_at_0015 = updated_at WHERE updated_at <> created_at;
ALTER TABLE contexts DROP COLUMN updated_at;
ALTER TABLE contexts RENAME COLUMN updated_at_0015 TO updated_at;
