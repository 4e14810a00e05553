-- SQLite-specific versions of shared queries (same name wins).

-- name: get_task_states
-- The named tasks of an execution (a JSON array of names): one query, however many.
SELECT id, task_name, status, attempt, retry_at, claimed_by, error_details, compensation_status
FROM task_executions
WHERE pipeline_execution_id = :id AND task_name IN (SELECT value FROM json_each(:names));

-- name: get_named_outputs
SELECT m.task_name, c.value
FROM task_execution_metadata m JOIN contexts c ON c.id = m.context_id
WHERE m.pipeline_execution_id = :id AND m.task_name IN (SELECT value FROM json_each(:names));
