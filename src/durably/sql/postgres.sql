-- PostgreSQL-specific versions of shared queries (same name wins).

-- name: notify_work
-- Wake idle workers blocked in PostgresStore.wait_for_work (LISTEN durably_work). Sent at
-- commit, so a worker never wakes before the work is visible.
SELECT pg_notify('durably_work', '');

-- name: lock_execution
-- Serialize the completions of one execution, so exactly one marks a shared dependent ready.
SELECT id FROM pipeline_executions WHERE id = :id FOR UPDATE;

-- name: claim_tasks
-- SKIP LOCKED: concurrent workers each take a different ready row without waiting.
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now
WHERE id IN (
    SELECT t.id FROM task_executions t
    JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
    WHERE t.status = 'ready' AND (t.retry_at IS NULL OR t.retry_at <= CAST(:now AS timestamptz))
      AND p.status = 'running' AND p.claimed_by IS NULL
      AND p.pipeline_name || '@' || p.pipeline_version IN (
          SELECT jsonb_array_elements_text(CAST(:names AS jsonb))
      )
    ORDER BY t.created_at, t.position
    LIMIT :limit
    FOR UPDATE OF t SKIP LOCKED
)
RETURNING id, pipeline_execution_id, task_name, attempt, task_configuration;

-- name: get_task_states
-- The named tasks of an execution (a JSON array of names): one query, however many.
SELECT *
FROM task_executions
WHERE pipeline_execution_id = :id
  AND task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)));

-- name: get_named_outputs
SELECT m.task_name, c.value
FROM task_execution_metadata m JOIN contexts c ON c.id = m.context_id
WHERE m.pipeline_execution_id = :id
  AND m.task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)));

-- name: heartbeat_executions
UPDATE pipeline_executions SET heartbeat_at = :now
WHERE claimed_by = :worker
  AND id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)));

-- name: heartbeat_tasks
UPDATE task_executions SET heartbeat_at = :now
WHERE claimed_by = :worker AND status = 'running'
  AND (id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
       OR pipeline_execution_id IN (
           SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:executions AS jsonb))
       ));

-- name: archive_attempt
INSERT INTO task_attempts (
    id, task_execution_id, pipeline_execution_id, task_name, number, status, started_at,
    finished_at, worker, error
)
SELECT CAST(:attempt_id AS uuid), id, pipeline_execution_id, task_name, attempt, status,
       started_at, COALESCE(completed_at, CAST(:now AS timestamptz)), claimed_by, error_details
FROM task_executions
WHERE id = :id AND attempt > 0 AND status IN ('completed', 'failed');
