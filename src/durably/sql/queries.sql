-- Workflow executions: named queries shared by every dialect (see __init__.py).
-- Times are ISO-8601 UTC text from Python; ids are UUID text.

-- name: insert_context
INSERT INTO contexts (id, value, created_at, updated_at) VALUES (:id, :value, :now, :now);

-- name: get_context
SELECT value FROM contexts WHERE id = :id;

-- name: insert_execution
-- A second start with the same workflow name and idempotency key inserts nothing.
INSERT INTO pipeline_executions (
    id, pipeline_name, pipeline_version, status, context_id, started_at, claimed_by,
    heartbeat_at, parent_execution_id, idempotency_key, created_at, updated_at
) VALUES (
    :id, :name, :version, :status, :context_id, :now, :claimed_by,
    :now, :parent_id, :key, :now, :now
)
ON CONFLICT (pipeline_name, idempotency_key) DO NOTHING;

-- name: find_execution_by_key
SELECT * FROM pipeline_executions WHERE pipeline_name = :name AND idempotency_key = :key;

-- name: insert_task
INSERT INTO task_executions (
    id, pipeline_execution_id, task_name, position, status, attempt, max_attempts,
    trigger_rules, task_configuration, claimed_by, heartbeat_at, started_at, completed_at,
    created_at, updated_at
) VALUES (
    :id, :execution_id, :name, :position, :status, :attempt, :max_attempts,
    :trigger_rules, :configuration, :claimed_by, :heartbeat_at, :started_at, :completed_at,
    :now, :now
);

-- name: get_execution
SELECT * FROM pipeline_executions WHERE id = :id;

-- name: get_tasks
SELECT * FROM task_executions WHERE pipeline_execution_id = :id ORDER BY position;

-- name: get_outputs
-- Every saved task output of an execution: one query, cached by the caller.
SELECT m.task_name, c.value
FROM task_execution_metadata m JOIN contexts c ON c.id = m.context_id
WHERE m.pipeline_execution_id = :id;

-- name: get_output_ids
SELECT task_name, task_execution_id, context_id FROM task_execution_metadata
WHERE pipeline_execution_id = :id;

-- name: get_task_output
SELECT c.value
FROM task_execution_metadata m JOIN contexts c ON c.id = m.context_id
WHERE m.pipeline_execution_id = :id AND m.task_name = :name;

-- name: list_executions
SELECT * FROM pipeline_executions
WHERE (CAST(:status AS TEXT) IS NULL OR status = CAST(:status AS TEXT))
  AND (CAST(:workflow AS TEXT) IS NULL OR pipeline_name = CAST(:workflow AS TEXT))
ORDER BY created_at DESC, id
LIMIT :limit;

-- name: start_task
-- The attempt starts: claimed by this engine or worker, counted before it runs.
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now
WHERE id = :id AND status IN ('not_started', 'ready');

-- name: complete_task
-- Conditional on still holding the claim for this attempt: a zombie's output is discarded.
-- claimed_by stays: once the task is finished it names who ran its last attempt (the task
-- row is that attempt's history entry; task_attempts keeps the attempts before it).
UPDATE task_executions
SET status = 'completed', completed_at = :now, error_details = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: save_output
INSERT INTO task_execution_metadata (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at, updated_at
) VALUES (:id, :task_id, :execution_id, :name, :context_id, :now, :now)
ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
    updated_at = excluded.updated_at;

-- name: fail_task
UPDATE task_executions
SET status = 'failed', completed_at = :now, error_details = :error, last_error = :error,
    updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: retry_task_later
UPDATE task_executions
SET status = 'ready', retry_at = :retry_at, last_error = :error, claimed_by = NULL,
    updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: settle_unstarted_task
-- A task decided without running: skipped by its trigger, or failed building its input.
UPDATE task_executions
SET status = :status, completed_at = :now, error_details = :error, claimed_by = NULL,
    updated_at = :now
WHERE id = :id AND status IN ('not_started', 'ready', 'running');

-- name: mark_ready
UPDATE task_executions SET status = 'ready', updated_at = :now
WHERE id = :id AND status = 'not_started';

-- name: finish_execution
UPDATE pipeline_executions
SET status = :status, final_context_id = :context_id, completed_at = :now,
    error_details = :error, claimed_by = NULL, updated_at = :now
WHERE id = :id AND status IN ('pending', 'running');

-- name: claim_execution
-- Take over an execution to drive it in this process (compare-and-swap on the old owner).
UPDATE pipeline_executions
SET claimed_by = :worker, heartbeat_at = :now, status = 'running', updated_at = :now,
    recovery_attempts = recovery_attempts + :recovered,
    last_recovery_at = CASE WHEN :recovered > 0 THEN :now ELSE last_recovery_at END
WHERE id = :id AND COALESCE(claimed_by, '') = :previous
  AND status IN ('pending', 'running', 'paused');

-- name: release_execution
UPDATE pipeline_executions SET claimed_by = NULL, updated_at = :now
WHERE id = :id AND claimed_by = :worker;

-- name: heartbeat_executions
-- Only the claims this process is still driving (a JSON array of ids): a claim orphaned by
-- an error goes stale, so another process can take it over.
UPDATE pipeline_executions SET heartbeat_at = :now
WHERE claimed_by = :worker AND id IN (SELECT value FROM json_each(:ids));

-- name: heartbeat_tasks
-- The tasks held one by one (a worker's), and every task of a held execution that this
-- process runs (the in-process runner's, which then needs no bookkeeping per task).
UPDATE task_executions SET heartbeat_at = :now
WHERE claimed_by = :worker AND status = 'running'
  AND (id IN (SELECT value FROM json_each(:ids))
       OR pipeline_execution_id IN (SELECT value FROM json_each(:executions)));

-- name: heartbeat_task
UPDATE task_executions SET heartbeat_at = :now
WHERE id = :id AND claimed_by = :worker AND status = 'running';

-- name: recover_task
-- A stale or orphaned claim goes back to ready; the attempt it lost still counts.
UPDATE task_executions
SET status = :status, claimed_by = NULL, recovery_attempts = recovery_attempts + 1,
    last_recovery_at = :now, error_details = :error, updated_at = :now,
    completed_at = CASE WHEN :status = 'abandoned' THEN :now ELSE completed_at END
WHERE id = :id AND status = 'running' AND claimed_by = :previous;

-- name: set_compensation
UPDATE task_executions
SET compensation_status = :status, compensation_error = :error, updated_at = :now
WHERE id = :id;

-- name: cancel_execution
UPDATE pipeline_executions
SET status = 'cancelled', completed_at = :now, claimed_by = NULL, updated_at = :now,
    error_details = :error
WHERE id = :id AND status IN ('pending', 'running', 'paused');

-- name: cancel_tasks
UPDATE task_executions
SET status = 'skipped', completed_at = :now, error_details = 'cancelled', claimed_by = NULL,
    updated_at = :now
WHERE pipeline_execution_id = :id AND status IN ('not_started', 'ready');

-- name: archive_attempt
-- retry() is about to reset a task: its last attempt, so far told by the task row itself,
-- moves to task_attempts (PostgreSQL casts the id).
INSERT INTO task_attempts (
    id, task_execution_id, pipeline_execution_id, task_name, number, status, started_at,
    finished_at, worker, error
)
SELECT :attempt_id, id, pipeline_execution_id, task_name, attempt, status, started_at,
       COALESCE(completed_at, :now), claimed_by, error_details
FROM task_executions
WHERE id = :id AND attempt > 0 AND status IN ('completed', 'failed');

-- name: reset_task
-- retry(): a task runs again with a fresh attempt budget (failed, skipped, upstream_failed,
-- abandoned, or completed and then compensated, or after one of those).
UPDATE task_executions
SET status = 'not_started', attempt = 0, retry_at = NULL, error_details = NULL,
    completed_at = NULL, claimed_by = NULL, compensation_status = NULL,
    compensation_error = NULL, updated_at = :now
WHERE id = :id AND status IN ('failed', 'skipped', 'upstream_failed', 'abandoned', 'completed');

-- name: delete_output
DELETE FROM task_execution_metadata WHERE pipeline_execution_id = :id AND task_name = :name;

-- name: reopen_execution
UPDATE pipeline_executions
SET status = :status, completed_at = NULL, error_details = NULL, final_context_id = NULL,
    claimed_by = NULL, updated_at = :now
WHERE id = :id AND status IN ('failed', 'cancelled');

-- name: stale_claims
-- Running tasks whose claim has not beaten since the cutoff (the sweeper's work list); never
-- the sweeper's own: a worker does not take over from itself after an outage.
SELECT t.id, t.pipeline_execution_id, t.task_name, t.claimed_by, t.attempt,
       t.recovery_attempts, t.started_at
FROM task_executions t
WHERE t.status = 'running' AND t.heartbeat_at < :cutoff AND t.claimed_by <> :worker;

-- name: orphaned_executions
-- Executions with no live driver: workers finish or compensate them.
SELECT id, pipeline_name, pipeline_version FROM pipeline_executions
WHERE status = 'running' AND (claimed_by IS NULL OR heartbeat_at < :cutoff)
  AND NOT EXISTS (
      SELECT 1 FROM task_executions t
      WHERE t.pipeline_execution_id = pipeline_executions.id
        AND t.status IN ('not_started', 'ready', 'running')
  );

-- name: notify_work
-- Wake idle workers (PostgreSQL overrides this with NOTIFY; SQLite workers poll).
SELECT 1;

-- name: lock_execution
-- Serialize the completions of one execution (PostgreSQL adds FOR UPDATE; SQLite's
-- IMMEDIATE transaction already holds the database's write lock).
SELECT id FROM pipeline_executions WHERE id = :id;

-- name: stale_executions
-- Executions whose in-process driver stopped beating: a worker takes them over.
SELECT id, claimed_by FROM pipeline_executions
WHERE status = 'running' AND claimed_by IS NOT NULL AND heartbeat_at < :cutoff
  AND claimed_by <> :worker;

-- name: hand_to_workers
UPDATE pipeline_executions
SET claimed_by = NULL, recovery_attempts = recovery_attempts + 1, last_recovery_at = :now,
    updated_at = :now
WHERE id = :id AND claimed_by = :previous;

-- name: claim_tasks
-- Up to :limit ready tasks of registered workflow versions, oldest first, for a worker.
-- SQLite runs it in an IMMEDIATE transaction, so two workers never claim the same row.
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now
WHERE id IN (
    SELECT t.id FROM task_executions t
    JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
    WHERE t.status = 'ready' AND (t.retry_at IS NULL OR t.retry_at <= :now)
      AND p.status = 'running' AND p.claimed_by IS NULL
      AND p.pipeline_name || '@' || p.pipeline_version IN (SELECT value FROM json_each(:names))
    ORDER BY t.created_at, t.position
    LIMIT :limit
)
RETURNING id, pipeline_execution_id, task_name, attempt, task_configuration;

-- name: worker_claims
-- The worker-path tasks a worker holds: any it is not running lost their claim's owner.
SELECT t.id, t.pipeline_execution_id, t.task_name, t.claimed_by, t.attempt,
       t.recovery_attempts, t.started_at
FROM task_executions t JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
WHERE t.claimed_by = :worker AND t.status = 'running' AND p.claimed_by IS NULL;

-- name: count_unfinished
SELECT count(*) AS unfinished FROM task_executions
WHERE pipeline_execution_id = :id AND status IN ('not_started', 'ready', 'running');

-- name: get_task_states
-- The named tasks of an execution (a JSON array of names): one query, however many.
-- json_each is SQLite; PostgreSQL overrides with jsonb_array_elements_text.
SELECT *
FROM task_executions
WHERE pipeline_execution_id = :id AND task_name IN (SELECT value FROM json_each(:names));

-- name: get_named_outputs
SELECT m.task_name, c.value
FROM task_execution_metadata m JOIN contexts c ON c.id = m.context_id
WHERE m.pipeline_execution_id = :id AND m.task_name IN (SELECT value FROM json_each(:names));

-- name: insert_attempt
-- An attempt that a later one supersedes (failed and retried, or lost), kept for the task's
-- history; the task row itself tells its current attempt.
INSERT INTO task_attempts (
    id, task_execution_id, pipeline_execution_id, task_name, number, status, started_at,
    finished_at, worker, error
) VALUES (
    :id, :task_id, :execution_id, :name, :attempt, :status, :started_at, :now, :worker, :error
);

-- name: get_attempts
SELECT task_name, number, status, started_at, finished_at, worker, error
FROM task_attempts WHERE pipeline_execution_id = :id
ORDER BY finished_at, number;
