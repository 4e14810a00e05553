-- 0012: an output's link row is written once per completed task, so it carries only the keys
-- its readers use. Its foreign keys to its task and to its context went: each was checked on
-- every insert, and the task one needed an index only so that deleting a task row could find
-- its outputs, which nothing does (pruning and a mapped task's retry delete outputs first, by
-- execution and task name). What keeps a shared context alive is prune_contexts' own check,
-- over task_execution_metadata_context. SQLite drops a foreign key by rebuilding the table.

CREATE TABLE task_execution_metadata_lean (
    id TEXT PRIMARY KEY,
    task_execution_id TEXT NOT NULL,
    pipeline_execution_id TEXT NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    task_name TEXT NOT NULL,
    context_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (pipeline_execution_id, task_name)
);
INSERT INTO task_execution_metadata_lean (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at, updated_at
)
SELECT id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at, updated_at
FROM task_execution_metadata;
DROP TABLE task_execution_metadata;
ALTER TABLE task_execution_metadata_lean RENAME TO task_execution_metadata;
CREATE INDEX task_execution_metadata_context ON task_execution_metadata (context_id);
