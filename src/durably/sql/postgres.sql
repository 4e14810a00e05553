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
    started_at = :now, retry_at = NULL, updated_at = :now,
    waited = CASE WHEN status = 'waiting' AND wait_event IS NULL THEN 1 ELSE waited END
WHERE id IN (
    SELECT t.id FROM task_executions t
    JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
    WHERE (t.status = 'ready' AND (t.retry_at IS NULL OR t.retry_at <= CAST(:now AS timestamptz))
           OR t.status = 'waiting' AND t.wake_at <= CAST(:now AS timestamptz))
      AND p.status = 'running' AND p.claimed_by IS NULL
      AND p.pipeline_name || '@' || p.pipeline_version IN (
          SELECT jsonb_array_elements_text(CAST(:names AS jsonb))
      )
    ORDER BY t.created_at, t.position
    LIMIT :limit
    FOR UPDATE OF t SKIP LOCKED
)
RETURNING id, pipeline_execution_id, task_name, attempt, task_configuration, wait_event,
    map_parent;

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
    finished_at, worker, error, logs
)
SELECT CAST(:attempt_id AS uuid), id, pipeline_execution_id, task_name, attempt, status,
       started_at, COALESCE(completed_at, CAST(:now AS timestamptz)), claimed_by, error_details,
       logs
FROM task_executions
WHERE id = :id AND attempt > 0 AND status IN ('completed', 'failed');

-- Retention and schedules ----------------------------------------------------------------------

-- name: prunable_executions
SELECT id, context_id, final_context_id FROM pipeline_executions
WHERE status = :status AND completed_at < CAST(:cutoff AS timestamptz)
ORDER BY completed_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: pruned_output_contexts
SELECT DISTINCT context_id FROM task_execution_metadata
WHERE pipeline_execution_id IN (
    SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb))
);

-- name: prune_attempts
DELETE FROM task_attempts WHERE pipeline_execution_id IN (
    SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb))
);

-- name: prune_outputs
DELETE FROM task_execution_metadata WHERE pipeline_execution_id IN (
    SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb))
);

-- name: prune_tasks
DELETE FROM task_executions WHERE pipeline_execution_id IN (
    SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb))
);

-- name: prune_executions
DELETE FROM pipeline_executions
WHERE id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
  AND status IN ('completed', 'failed', 'cancelled');

-- name: prune_contexts
DELETE FROM contexts
WHERE id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
  AND NOT EXISTS (SELECT 1 FROM pipeline_executions p WHERE p.context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM pipeline_executions p WHERE p.final_context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM task_execution_metadata m WHERE m.context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM saga_executions s WHERE s.context_id = contexts.id);

-- name: prunable_sagas
SELECT id, context_id FROM saga_executions
WHERE status = :status AND updated_at < CAST(:cutoff AS timestamptz)
ORDER BY updated_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: prune_saga_replies
DELETE FROM saga_replies WHERE saga_execution_id IN (
    SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb))
);

-- name: prune_sagas
DELETE FROM saga_executions
WHERE id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
  AND status IN ('finished', 'errored');

-- name: waiting_for_event
-- FOR UPDATE: a worker claiming this task as its wait times out holds the row; waiting for
-- it re-checks the status, so an event sent meanwhile stays in the mailbox for the retry.
SELECT id, task_name, task_configuration, received FROM task_executions
WHERE pipeline_execution_id = :id AND status = 'waiting' AND wait_event = :name
ORDER BY position
LIMIT 1
FOR UPDATE;
