-- Workflow executions: named queries shared by every dialect (see __init__.py).
-- Times are ISO-8601 UTC text from Python; ids are UUID text.

-- Context rows: base_id NULL, value is the codec's full text. Otherwise value is what changed
-- since the full row base_id (repository/deltas.py): every read of a context joins the row
-- it rests on (base_value), and that row's own base_id, which the reader checks is NULL.

-- A workflow's context row is never updated: its updated_at stays NULL (0015).

-- name: insert_context
INSERT INTO contexts (id, value, created_at) VALUES (:id, :value, :now);

-- name: insert_context_delta
-- What changed since the full row :base_id, if that row exists, else the full text (:full):
-- a process may still hold in memory a row it wrote in a transaction that rolled back
-- (repository/saved.py). Always one row, so the caller waits for no answer.
INSERT INTO contexts (id, value, base_id, created_at)
SELECT :id, CASE WHEN b.id IS NULL THEN :full ELSE :value END, b.id, :now
FROM (SELECT 1 AS one) o LEFT JOIN contexts b ON b.id = :base_id AND b.base_id IS NULL;

-- name: get_context
SELECT c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM contexts c LEFT JOIN contexts b ON b.id = c.base_id
WHERE c.id = :id;

-- name: insert_execution
-- A second start with the same workflow name and idempotency key inserts nothing.
INSERT INTO pipeline_executions (
    id, pipeline_name, pipeline_version, pipeline_shape, status, context_id, started_at,
    claimed_by, heartbeat_at, parent_execution_id, parent_task, idempotency_key, priority,
    concurrency_key, configuration_id, created_at, updated_at
) VALUES (
    :id, :name, :version, :shape, :status, :context_id, :now,
    :claimed_by, :now, :parent_id, :parent_task, :key, :priority, :concurrency_key,
    :configuration_id, :now, :now
)
ON CONFLICT (pipeline_name, idempotency_key) DO NOTHING;

-- name: insert_task_configurations
-- A definition's task configurations, by the hash of their text: stored by the first start.
INSERT INTO task_configurations (id, pipeline_name, value, trigger_rules, created_at)
VALUES (:id, :name, :value, :trigger_rules, :now)
ON CONFLICT (id) DO NOTHING;

-- name: get_task_configurations
SELECT value FROM task_configurations WHERE id = :id;

-- name: find_execution_by_key
SELECT * FROM pipeline_executions WHERE pipeline_name = :name AND idempotency_key = :key;

-- name: insert_task
INSERT INTO task_executions (
    id, pipeline_execution_id, task_name, position, status, attempt, max_attempts,
    task_configuration, claimed_by, heartbeat_at, started_at, completed_at,
    concurrency_key, rate_key, priority, flow_limited, pipeline_key, created_at, updated_at
) VALUES (
    :id, :execution_id, :name, :position, :status, :attempt, :max_attempts,
    :configuration, :claimed_by, :heartbeat_at, :started_at, :completed_at,
    :concurrency_key, :rate_key, :priority, :flow_limited, :pipeline_key, :now, :now
);

-- name: get_execution
SELECT * FROM pipeline_executions WHERE id = :id;

-- name: get_executions
-- Several executions' rows (:ids, a JSON array), each with its initial context where
-- :with_context (a JSON array of some of those ids) names it: what a claim of several tasks
-- needs of their executions, in one statement.
SELECT p.*, c.value AS initial_context, c.base_id AS initial_base
FROM pipeline_executions p
LEFT JOIN contexts c
    ON c.id = p.context_id AND p.id IN (SELECT value FROM json_each(:with_context))
WHERE p.id IN (SELECT value FROM json_each(:ids));

-- name: get_tasks
SELECT * FROM task_executions WHERE pipeline_execution_id = :id
ORDER BY position, COALESCE(map_index, -1);

-- name: get_outputs
-- Every saved task output of an execution: one query, cached by the caller.
SELECT m.task_name, c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM task_execution_metadata m
JOIN contexts c ON c.id = m.context_id
LEFT JOIN contexts b ON b.id = c.base_id
WHERE m.pipeline_execution_id = :id;

-- name: get_output_ids
SELECT task_name, task_execution_id, context_id FROM task_execution_metadata
WHERE pipeline_execution_id = :id;

-- name: get_task_output
SELECT c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM task_execution_metadata m
JOIN contexts c ON c.id = m.context_id
LEFT JOIN contexts b ON b.id = c.base_id
WHERE m.pipeline_execution_id = :id AND m.task_name = :name;

-- Lists, newest first, one page after a keyset cursor (durably.listing). Each variant walks
-- one index in (created_at, id) order, so a page reads about :limit rows: no filter
-- pipeline_executions_created, a status pipeline_executions_status, a workflow
-- pipeline_executions_name, a key pipeline_executions_idempotency_key. The repository picks.

-- name: list_executions
SELECT * FROM pipeline_executions
WHERE (created_at, id) < (:before_at, :before_id) AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: child_executions
-- The sub-workflow executions a parent's tasks started, oldest first.
SELECT id, parent_task, status, pipeline_name, created_at FROM pipeline_executions
WHERE parent_execution_id = :id AND parent_task IS NOT NULL
ORDER BY created_at, id;

-- name: list_executions_by_status
SELECT * FROM pipeline_executions
WHERE status = :status AND (created_at, id) < (:before_at, :before_id) AND created_at >= :since
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: list_executions_by_workflow
SELECT * FROM pipeline_executions
WHERE pipeline_name = :workflow
  AND (created_at, id) < (:before_at, :before_id) AND created_at >= :since
  AND (CAST(:status AS TEXT) IS NULL OR status = CAST(:status AS TEXT))
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: list_executions_by_key
SELECT * FROM pipeline_executions
WHERE idempotency_key = :key
  AND (created_at, id) < (:before_at, :before_id) AND created_at >= :since
  AND (CAST(:status AS TEXT) IS NULL OR status = CAST(:status AS TEXT))
  AND (CAST(:workflow AS TEXT) IS NULL OR pipeline_name = CAST(:workflow AS TEXT))
ORDER BY created_at DESC, id DESC
LIMIT :limit;

-- name: count_executions
-- Per status, within the time range: pipeline_executions_status covers it.
SELECT status, COUNT(*) AS n FROM pipeline_executions
WHERE created_at >= :since AND created_at < :until
GROUP BY status;

-- name: count_executions_of_workflow
SELECT status, COUNT(*) AS n FROM pipeline_executions
WHERE pipeline_name = :workflow AND created_at >= :since AND created_at < :until
GROUP BY status;

-- name: count_executions_by_key
SELECT status, COUNT(*) AS n FROM pipeline_executions
WHERE idempotency_key = :key AND created_at >= :since AND created_at < :until
  AND (CAST(:workflow AS TEXT) IS NULL OR pipeline_name = CAST(:workflow AS TEXT))
GROUP BY status;

-- name: start_task
-- The attempt starts: claimed by this engine or worker, counted before it runs. From a
-- timer wait that is over, the wait is satisfied; from an event wait past its timeout it is
-- not (that attempt records the timeout, and a retry waits again).
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now, code_version = :code_version,
    waited = CASE WHEN status = 'waiting' AND wait_event IS NULL THEN 1 ELSE waited END
WHERE id = :id AND status IN ('not_started', 'ready', 'waiting');

-- name: complete_task
-- Conditional on still holding the claim for this attempt: a zombie's output is discarded.
-- claimed_by stays: once the task is finished it names who ran its last attempt (the task
-- row is that attempt's history entry; task_attempts keeps the attempts before it).
UPDATE task_executions
SET status = 'completed', completed_at = :now, error_details = NULL, logs = :logs,
    updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: save_output
-- updated_at stays NULL until the link is replaced (0015: a mapped task's retry, a rerun).
INSERT INTO task_execution_metadata (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at
) VALUES (:id, :task_id, :execution_id, :name, :context_id, :now)
ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
    updated_at = excluded.created_at;

-- name: link_saved_output
-- save_output for a row saved before (an output equal to the row its input came from), only
-- if that row exists, as insert_context_delta checks its base.
INSERT INTO task_execution_metadata (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at
)
SELECT :id, :task_id, :execution_id, :name, :context_id, :now
WHERE EXISTS (SELECT 1 FROM contexts c WHERE c.id = :context_id)
ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
    updated_at = excluded.created_at;

-- name: fail_task
UPDATE task_executions
SET status = 'failed', completed_at = :now, error_details = :error, last_error = :error,
    wake_at = NULL, wait_event = NULL, logs = :logs, updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: retry_task_later
UPDATE task_executions
SET status = 'ready', retry_at = :retry_at, last_error = :error, claimed_by = NULL,
    wake_at = NULL, wait_event = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND claimed_by = :worker AND attempt = :attempt;

-- name: settle_unstarted_task
-- A task decided without running: skipped by its trigger, or failed building its input.
UPDATE task_executions
SET status = :status, completed_at = :now, error_details = :error, claimed_by = NULL,
    updated_at = :now
WHERE id = :id AND status IN ('not_started', 'ready', 'running');

-- name: mark_ready
-- The tasks a completion unblocked (:ids, a JSON array): one statement, however many (a
-- fan-out's first task unblocks all its middles).
UPDATE task_executions SET status = 'ready', updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'not_started';

-- name: save_final_fallback
-- The final context in full under :fallback_id, if the row saved before that it is meant to
-- be (:context_id, an output's) does not exist (see insert_context_delta).
INSERT INTO contexts (id, value, created_at)
SELECT :fallback_id, :final, :now
WHERE NOT EXISTS (SELECT 1 FROM contexts c WHERE c.id = :context_id);

-- name: finish_execution
-- The final context is :context_id, or the full copy save_final_fallback made when that row
-- saved before does not exist (:fallback_id is :context_id for a row written just now).
UPDATE pipeline_executions
SET status = :status,
    final_context_id = COALESCE((SELECT c.id FROM contexts c WHERE c.id = :context_id),
                                :fallback_id),
    completed_at = :now, error_details = :error, claimed_by = NULL, updated_at = :now
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
WHERE pipeline_execution_id = :id AND status IN ('not_started', 'ready', 'waiting');

-- name: archive_attempt
-- retry() is about to reset a task: its last attempt, so far told by the task row itself,
-- moves to task_attempts with its logs (PostgreSQL casts the id).
INSERT INTO task_attempts (
    id, task_execution_id, pipeline_execution_id, task_name, number, status, started_at,
    finished_at, worker, error, logs, code_version
)
SELECT :attempt_id, id, pipeline_execution_id, task_name, attempt, status, started_at,
       COALESCE(completed_at, :now), claimed_by, error_details, logs, code_version
FROM task_executions
WHERE id = :id AND attempt > 0 AND status IN ('completed', 'failed');

-- name: reset_task
-- retry(): a task runs again with a fresh attempt budget (failed, skipped, upstream_failed,
-- abandoned, or completed and then compensated, or after one of those).
UPDATE task_executions
SET status = 'not_started', attempt = 0, retry_at = NULL, error_details = NULL,
    completed_at = NULL, claimed_by = NULL, compensation_status = NULL, logs = NULL,
    compensation_error = NULL, wake_at = NULL, wait_event = NULL, map_total = NULL,
    map_done = 0, map_failed = 0, updated_at = :now
WHERE id = :id AND status IN ('failed', 'skipped', 'upstream_failed', 'abandoned', 'completed');

-- name: delete_output
-- retry(): the task runs again. Its row goes too once nothing links it (prune_contexts).
DELETE FROM task_execution_metadata WHERE pipeline_execution_id = :id AND task_name = :name
RETURNING context_id;

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
        AND t.status IN ('not_started', 'ready', 'waiting', 'running')
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
-- Up to :limit ready tasks of the executions this worker has a definition for (but those
-- of the :limited ones whose rows carry limits: claim_limited_tasks takes them), highest
-- priority first, oldest first within one. :versions maps each claimable name@shape to the
-- version of the definition that runs it, recorded as the attempt's code_version. Ready rows
-- and due rows (due_tasks: waiting ones whose time came, ready ones whose retry is due, each
-- found through its index by time) are read apart, each in claim order. Ready rows are
-- walked in the task_executions_claim index's order, which leaves out the rows awaiting a
-- retry: a claim reads about :limit rows, however many are ready or retrying later.
-- The plan is spelled out, because the planner's guess without statistics (or with stale
-- ones) is to sort every ready row: INDEXED BY names each index, and CROSS JOIN keeps the
-- task rows the outer loop, each execution found by its key.
-- SQLite runs it in an IMMEDIATE transaction, so two workers never claim the same row.
WITH due_tasks AS (
    SELECT id FROM task_executions INDEXED BY task_executions_waiting
    WHERE status = 'waiting' AND wake_at <= :now
    UNION ALL
    SELECT id FROM task_executions INDEXED BY task_executions_retrying
    WHERE status = 'ready' AND retry_at <= :now
)
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now,
    waited = CASE WHEN status = 'waiting' AND wait_event IS NULL THEN 1 ELSE waited END,
    code_version = (SELECT value FROM json_each(:versions) WHERE key = pipeline_key)
WHERE id IN (
    SELECT id FROM (
        SELECT * FROM (
            SELECT t.id, t.priority, t.created_at, t.position
            FROM task_executions t INDEXED BY task_executions_claim
            CROSS JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
            WHERE t.status = 'ready' AND t.retry_at IS NULL
              AND p.status = 'running' AND p.claimed_by IS NULL
              AND t.pipeline_key IN (SELECT key FROM json_each(:versions))
              AND (t.flow_limited = 0
                   OR t.pipeline_key NOT IN (SELECT value FROM json_each(:limited)))
            ORDER BY t.priority DESC, t.created_at, t.position
            LIMIT :limit
        )
        UNION ALL
        SELECT * FROM (
            SELECT t.id, t.priority, t.created_at, t.position
            FROM task_executions t
            CROSS JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
            WHERE t.id IN (SELECT id FROM due_tasks)
              AND p.status = 'running' AND p.claimed_by IS NULL
              AND t.pipeline_key IN (SELECT key FROM json_each(:versions))
              AND (t.flow_limited = 0
                   OR t.pipeline_key NOT IN (SELECT value FROM json_each(:limited)))
            ORDER BY t.priority DESC, t.created_at, t.position
            LIMIT :limit
        )
    )
    ORDER BY priority DESC, created_at, position
    LIMIT :limit
)
RETURNING *;

-- name: worker_claims
-- The worker-path tasks a worker holds: any it is not running lost their claim's owner.
SELECT t.id, t.pipeline_execution_id, t.task_name, t.claimed_by, t.attempt,
       t.recovery_attempts, t.started_at
FROM task_executions t JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
WHERE t.claimed_by = :worker AND t.status = 'running' AND p.claimed_by IS NULL;

-- name: count_unfinished
SELECT count(*) AS unfinished FROM task_executions
WHERE pipeline_execution_id = :id AND status IN ('not_started', 'ready', 'waiting', 'running');

-- name: get_task_states_waiting
-- get_task_states, each row with unfinished: for a task :waits names (a JSON array of
-- [name, its other dependencies]), whether any of those is not in a terminal status
-- (:terminal, a JSON array), else NULL. A wide fan-in's last dependency is found without
-- reading the others, in the same statement: they are probed in their order, one index
-- look-up each, up to the first unfinished one (named likeliest first, a completion costs a
-- probe or two, not one per dependency).
SELECT t.*, (
    SELECT EXISTS (
        SELECT 1 FROM json_each(w.value, '$[1]') n
        CROSS JOIN task_executions u
        WHERE u.pipeline_execution_id = t.pipeline_execution_id AND u.task_name = n.value
          AND u.status NOT IN (SELECT value FROM json_each(:terminal))
    )
    FROM json_each(:waits) w
    WHERE json_extract(w.value, '$[0]') = t.task_name
) AS unfinished
FROM task_executions t
WHERE t.pipeline_execution_id = :id AND t.task_name IN (SELECT value FROM json_each(:names));

-- name: get_task_states
-- The named tasks of an execution (a JSON array of names): one query, however many.
-- json_each is SQLite; PostgreSQL overrides with jsonb_array_elements_text.
SELECT *
FROM task_executions
WHERE pipeline_execution_id = :id AND task_name IN (SELECT value FROM json_each(:names));

-- name: get_named_outputs
SELECT m.task_name, c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM task_execution_metadata m
JOIN contexts c ON c.id = m.context_id
LEFT JOIN contexts b ON b.id = c.base_id
WHERE m.pipeline_execution_id = :id AND m.task_name IN (SELECT value FROM json_each(:names));

-- name: insert_attempt
-- An attempt that a later one supersedes (failed and retried, or lost), kept for the task's
-- history; the task row itself tells its current attempt (and, until the next one starts,
-- the version of the code this one ran).
INSERT INTO task_attempts (
    id, task_execution_id, pipeline_execution_id, task_name, number, status, started_at,
    finished_at, worker, error, logs, code_version
) VALUES (
    :id, :task_id, :execution_id, :name, :attempt, :status, :started_at, :now, :worker, :error,
    :logs, (SELECT code_version FROM task_executions WHERE id = :task_id)
);

-- name: get_attempts
SELECT task_name, number, status, started_at, finished_at, worker, error, logs, code_version
FROM task_attempts WHERE pipeline_execution_id = :id
ORDER BY finished_at, number;


-- CLI lookups

-- name: executions_by_prefix
-- The workflow and saga executions whose id starts with a prefix, given as the range of the
-- ids that do (:low = the prefix padded with 0s, :high = with fs). Ids compare as their hex
-- digits on both backends (lowercase text on SQLite, uuid on PostgreSQL), so each side is a
-- range scan of its primary key.
SELECT id, 'workflow' AS kind FROM pipeline_executions WHERE id BETWEEN :low AND :high
UNION ALL
SELECT id, 'saga' AS kind FROM saga_executions WHERE id BETWEEN :low AND :high
ORDER BY id
LIMIT :limit;

-- Waits and events (SPEC §3.4) ----------------------------------------------------------------

-- name: wait_task
-- A ready task with a wait starts waiting: from unstarted (in-process), or from a worker's
-- claim, which then did not start an attempt (its count goes back).
UPDATE task_executions
SET status = 'waiting', wake_at = :wake_at, wait_event = :event, claimed_by = NULL,
    retry_at = NULL,
    attempt = CASE WHEN status = 'running' THEN attempt - 1 ELSE attempt END,
    started_at = CASE WHEN status = 'running' THEN NULL ELSE started_at END, updated_at = :now
WHERE id = :id
  AND (status IN ('not_started', 'ready') OR (status = 'running' AND claimed_by = :worker));

-- name: take_event
-- Mailbox: the oldest event of that name nobody consumed, now consumed by this task. The
-- outer condition makes two concurrent takers consume it once.
UPDATE execution_events SET consumed_by = :task_id, consumed_at = :now
WHERE seq = (
    SELECT seq FROM execution_events
    WHERE pipeline_execution_id = :id AND name = :name AND consumed_by IS NULL
    ORDER BY seq
    LIMIT 1
) AND consumed_by IS NULL
RETURNING payload;

-- name: set_received
UPDATE task_executions SET received = :received, waited = 1, updated_at = :now WHERE id = :id;

-- name: mark_waited
-- A timer wait already over when the task became ready: it counts as waited.
UPDATE task_executions SET waited = 1, updated_at = :now WHERE id = :id;

-- name: waiting_for_event
SELECT id, task_name, task_configuration, received, map_parent,
       (SELECT g.value FROM pipeline_executions p
        JOIN task_configurations g ON g.id = p.configuration_id WHERE p.id = :id) AS configurations
FROM task_executions
WHERE pipeline_execution_id = :id AND status = 'waiting' AND wait_event = :name
ORDER BY position
LIMIT 1;

-- name: insert_event
-- A repeated idempotency key inserts nothing (idempotent send): no row comes back then.
INSERT INTO execution_events (
    pipeline_execution_id, name, idempotency_key, payload, consumed_by, created_at, consumed_at
) VALUES (:id, :name, :key, :payload, NULL, :now, NULL)
ON CONFLICT (pipeline_execution_id, idempotency_key) DO NOTHING
RETURNING seq;

-- name: consume_event
UPDATE execution_events SET consumed_by = :task_id, consumed_at = :now WHERE seq = :seq;

-- name: deliver_event
UPDATE task_executions
SET status = 'ready', waited = 1, wake_at = NULL, wait_event = NULL, received = :received,
    retry_at = NULL, updated_at = :now
WHERE id = :id AND status = 'waiting';

-- name: next_wake
-- When a worker must look again: the earliest timer or event timeout of a waiting task, or
-- retry of a ready one. Each is the first entry of its index by time, asked as such: a min()
-- the planner believed had a row or two to read (stale statistics) read every retrying one.
SELECT min(at) AS wake_at FROM (
    SELECT * FROM (
        SELECT wake_at AS at FROM task_executions WHERE status = 'waiting'
        ORDER BY wake_at LIMIT 1
    ) timer
    UNION ALL
    SELECT * FROM (
        SELECT retry_at FROM task_executions WHERE status = 'ready' AND retry_at IS NOT NULL
        ORDER BY retry_at LIMIT 1
    ) retry
) due;

-- name: get_events
SELECT name, idempotency_key, consumed_by, created_at, consumed_at FROM execution_events
WHERE pipeline_execution_id = :id
ORDER BY seq;

-- Retention and schedules ----------------------------------------------------------------------
-- Pruning works on a batch of executions given as a JSON array of ids (:ids): their rows are
-- deleted children first, then the contexts only they referenced.

-- name: prunable_executions
-- The oldest finished executions of one status (index pipeline_executions_finished).
-- PostgreSQL locks them (SKIP LOCKED), so a concurrent retry cannot reopen one mid-prune.
SELECT id, context_id, final_context_id FROM pipeline_executions
WHERE status = :status AND completed_at < :cutoff
ORDER BY completed_at
LIMIT :limit;

-- name: count_prunable_executions
SELECT count(*) AS n FROM pipeline_executions WHERE status = :status AND completed_at < :cutoff;

-- name: pruned_output_contexts
SELECT DISTINCT context_id FROM task_execution_metadata
WHERE pipeline_execution_id IN (SELECT value FROM json_each(:ids));

-- name: prune_attempts
DELETE FROM task_attempts WHERE pipeline_execution_id IN (SELECT value FROM json_each(:ids));

-- name: prune_outputs
DELETE FROM task_execution_metadata
WHERE pipeline_execution_id IN (SELECT value FROM json_each(:ids));

-- name: prune_tasks
DELETE FROM task_executions WHERE pipeline_execution_id IN (SELECT value FROM json_each(:ids));

-- name: prune_executions
-- Events (execution_events) go with their execution by its ON DELETE CASCADE.
DELETE FROM pipeline_executions
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('completed', 'failed', 'cancelled');

-- name: prune_contexts
-- Only contexts nothing references any more: a fork shares its parent's initial context and
-- the outputs it reused, so a pruned parent's rows may still be needed.
DELETE FROM contexts
WHERE id IN (SELECT value FROM json_each(:ids))
  AND NOT EXISTS (SELECT 1 FROM pipeline_executions p WHERE p.context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM pipeline_executions p WHERE p.final_context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM task_execution_metadata m WHERE m.context_id = contexts.id)
  AND NOT EXISTS (SELECT 1 FROM saga_executions s WHERE s.context_id = contexts.id);

-- name: prunable_sagas
-- Finished saga executions: a finished or errored saga is not written again after updated_at.
SELECT id, context_id FROM saga_executions
WHERE status = :status AND updated_at < :cutoff
ORDER BY updated_at
LIMIT :limit;

-- name: count_prunable_sagas
SELECT count(*) AS n FROM saga_executions WHERE status = :status AND updated_at < :cutoff;

-- name: prune_saga_inbox
-- A participant's oldest recorded replies (saga_inbox.py), a batch at a time: a request
-- delivered again after its reply is pruned runs its handler again.
DELETE FROM saga_inbox WHERE (target, idempotency_key) IN (
    SELECT target, idempotency_key FROM saga_inbox WHERE created_at < :cutoff
    ORDER BY created_at LIMIT :limit
);

-- name: prune_saga_replies
DELETE FROM saga_replies WHERE saga_execution_id IN (SELECT value FROM json_each(:ids));

-- name: prune_sagas
DELETE FROM saga_executions
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('finished', 'errored');

-- name: ensure_schedule
-- A schedule seen for the first time starts at this moment: no slot before it is missed.
INSERT INTO schedules (
    workflow_name, name, cron, timezone, catch_up, checked_at, missed, created_at, updated_at
) VALUES (:workflow, :name, :cron, :timezone, :catch_up, :now, 0, :now, :now)
ON CONFLICT (workflow_name, name) DO NOTHING;

-- name: get_schedule
SELECT * FROM schedules WHERE workflow_name = :workflow AND name = :name;

-- name: advance_schedule
-- Compare-and-swap on the cursor: of two workers that read the same state, exactly one moves
-- it (and counts the missed slots once).
UPDATE schedules
SET checked_at = :checked_at, missed = missed + :missed, cron = :cron, timezone = :timezone,
    catch_up = :catch_up, updated_at = :now
WHERE workflow_name = :workflow AND name = :name AND checked_at = :previous_at;

-- name: record_schedule_run
UPDATE schedules SET last_slot = :slot_at, last_execution_id = :execution_id, updated_at = :now
WHERE workflow_name = :workflow AND name = :name;

-- name: list_schedules
SELECT s.*, p.status AS last_status
FROM schedules s LEFT JOIN pipeline_executions p ON p.id = s.last_execution_id
ORDER BY s.workflow_name, s.name;

-- Mapped tasks (SPEC §3.4) --------------------------------------------------------------------

-- name: insert_instance
-- One instance of a mapped task (sent as one executemany for all of them): running when the
-- in-process runner claims it at once, ready for a worker, not_started behind max_parallel.
INSERT INTO task_executions (
    id, pipeline_execution_id, task_name, position, status, attempt, max_attempts,
    task_configuration, claimed_by, heartbeat_at, started_at, map_parent,
    map_index, code_version, concurrency_key, rate_key, flow_limited, pipeline_key, priority,
    created_at, updated_at
) VALUES (
    :id, :execution_id, :name, :position, :status, :attempt, :max_attempts,
    :configuration, :claimed_by, :heartbeat_at, :started_at, :parent,
    :index, :code_version, :concurrency_key, :rate_key, :flow_limited, :pipeline_key,
    COALESCE((SELECT priority FROM pipeline_executions WHERE id = :execution_id), 0), :now, :now
);

-- name: expand_task
-- The mapped task fanned out: it stays running, held by nobody, until its instances are done.
UPDATE task_executions
SET status = 'running', map_total = :total, attempt = 1, claimed_by = NULL, started_at = :now,
    updated_at = :now
WHERE id = :id
  AND (status IN ('not_started', 'ready') OR (status = 'running' AND claimed_by = :worker));

-- name: promote_instance
-- A slot under max_parallel freed up: the next instance, by index, may run.
UPDATE task_executions SET status = 'ready', updated_at = :now
WHERE id = (
    SELECT id FROM task_executions
    WHERE pipeline_execution_id = :id AND map_parent = :parent AND status = 'not_started'
    ORDER BY map_index
    LIMIT 1
) AND status = 'not_started'
RETURNING id, task_name, map_index;

-- name: count_instance_done
-- An instance finished: count it on its mapped task's row, which says whether it was the last.
UPDATE task_executions
SET map_done = map_done + 1, map_failed = map_failed + :failed, updated_at = :now
WHERE id = :id
RETURNING map_total, map_done, map_failed;

-- name: instance_outputs
-- The link found by (execution, name), its unique index: task_execution_id has none (0012).
SELECT t.map_index, c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM task_executions t
JOIN task_execution_metadata m
  ON m.pipeline_execution_id = t.pipeline_execution_id AND m.task_name = t.task_name
JOIN contexts c ON c.id = m.context_id
LEFT JOIN contexts b ON b.id = c.base_id
WHERE t.pipeline_execution_id = :id AND t.map_parent = :parent
ORDER BY t.map_index;

-- name: finish_mapped_task
UPDATE task_executions
SET status = :status, completed_at = :now, error_details = :error, updated_at = :now
WHERE id = :id AND status = 'running' AND map_total IS NOT NULL;

-- name: reset_instance
-- retry(): a failed instance of a mapped task runs again.
UPDATE task_executions
SET status = 'ready', attempt = 0, retry_at = NULL, error_details = NULL, completed_at = NULL,
    started_at = NULL, claimed_by = NULL, compensation_status = NULL,
    compensation_error = NULL, logs = NULL, updated_at = :now
WHERE id = :id AND map_parent IS NOT NULL;

-- name: reopen_mapped_task
-- retry(): the mapped task waits again for the instances that run again.
UPDATE task_executions
SET status = 'running', completed_at = NULL, error_details = NULL,
    map_done = map_done - :reopened, map_failed = 0, updated_at = :now
WHERE id = :id AND map_total IS NOT NULL;

-- name: delete_instance_outputs
-- Before the instances themselves: an output row does not follow its task by a cascade.
DELETE FROM task_execution_metadata
WHERE pipeline_execution_id = :id AND task_name IN (
    SELECT task_name FROM task_executions WHERE pipeline_execution_id = :id AND map_parent = :parent
)
RETURNING context_id;

-- name: delete_instances
DELETE FROM task_executions WHERE pipeline_execution_id = :id AND map_parent = :parent;


-- Metrics, read when Prometheus scrapes a worker (durably worker --metrics-port) -------------

-- name: count_executions_by_status
-- An index-only count on pipeline_executions_status.
SELECT status, count(*) AS n FROM pipeline_executions GROUP BY status;

-- name: count_sagas_by_status
SELECT status, count(*) AS n FROM saga_executions GROUP BY status;

-- name: count_active_tasks_by_status
-- The tasks of unfinished executions only: finished ones are the bulk of the table, and
-- the task counters of each worker tell their outcomes.
SELECT t.status, count(*) AS n
FROM pipeline_executions p JOIN task_executions t ON t.pipeline_execution_id = p.id
WHERE p.status IN ('pending', 'running', 'paused')
GROUP BY t.status;

-- name: count_ready_tasks
-- The queue depth: ready tasks, read from the partial index task_executions_claim.
SELECT count(*) AS n FROM task_executions WHERE status = 'ready';

-- name: count_outbox
-- Saga requests not yet published (a published one's row is deleted).
SELECT count(*) AS n FROM saga_outbox;

-- name: set_trace_context
-- With tracing on: the trace context of the span that started the execution (JSON text).
UPDATE pipeline_executions SET trace_context = :trace WHERE id = :id;

-- Flow control (SPEC §3.5, flow.py) -------------------------------------------------------------
-- :task_limits maps a limited task's key to its max, :flow_limits a limited workflow's name to
-- its max, :rate_limits a bucket's name to [per_second, capacity] (JSON objects, from the
-- worker's definitions: a key none of them limits is not limited). :clock is the engine
-- clock's epoch seconds, which buckets count in.

-- name: lock_flow
-- Before a limited claim: the buckets it may take tokens from exist (a new one is full).
-- PostgreSQL also takes a transaction lock per limited key (postgres.sql). SQLite's
-- IMMEDIATE transaction already holds the write lock: nobody else counts meanwhile.
INSERT INTO rate_buckets (name, tokens, counted_at)
SELECT key, json_extract(value, '$[1]'), :clock FROM json_each(:rate_limits) WHERE true
ON CONFLICT (name) DO NOTHING;

-- name: claim_limited_tasks
-- claim_tasks for the workflows with limits: the same order, but a task is a candidate only
-- while its key has a free slot, its bucket a token, and its execution a slot (or one
-- already: admitted). Within the batch, a key gives out no more than it has free (ranked by
-- the claim order, an execution counted once), so one claim never exceeds a limit. SQLite
-- returns booked = 0: the caller then admits the executions and spends the tokens.
WITH
due_tasks AS (
    SELECT id FROM task_executions INDEXED BY task_executions_waiting
    WHERE status = 'waiting' AND wake_at <= :now
    UNION ALL
    SELECT id FROM task_executions INDEXED BY task_executions_retrying
    WHERE status = 'ready' AND retry_at <= :now
),
task_max AS (SELECT key AS k, value AS m FROM json_each(:task_limits)),
flow_max AS (SELECT key AS k, value AS m FROM json_each(:flow_limits)),
tokens AS (
    SELECT j.key AS k,
           min(json_extract(j.value, '$[1]'),
               b.tokens + max(0, :clock - b.counted_at) * json_extract(j.value, '$[0]')) AS free
    FROM json_each(:rate_limits) j JOIN rate_buckets b ON b.name = j.key
),
ready_open AS (
    SELECT * FROM (
        SELECT t.id, t.task_name, t.created_at, t.position, t.priority, p.id AS execution_id,
               p.created_at AS queued_at, t.concurrency_key AS tk, t.rate_key AS rk,
               CASE WHEN p.admitted = 0 THEN p.concurrency_key END AS wk,
               (SELECT m.m - (SELECT count(*) FROM task_executions r
                              WHERE r.concurrency_key = m.k AND r.status = 'running'
                                AND r.map_total IS NULL)
                FROM task_max m WHERE m.k = t.concurrency_key) AS tfree,
               (SELECT free FROM tokens WHERE k = t.rate_key) AS rfree,
               CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
                   (SELECT f.m - (SELECT count(*) FROM pipeline_executions a
                                  WHERE a.concurrency_key = p.concurrency_key
                                    AND a.status = 'running' AND a.admitted = 1)
                    FROM flow_max f WHERE f.k = p.pipeline_name)
               END AS wfree
        FROM task_executions t INDEXED BY task_executions_limited_claim
        CROSS JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
        WHERE t.status = 'ready' AND t.flow_limited = 1 AND t.retry_at IS NULL
          AND p.status = 'running' AND p.claimed_by IS NULL
          AND t.pipeline_key IN (SELECT key FROM json_each(:versions))
    )
    WHERE COALESCE(tfree, 1) >= 1 AND COALESCE(rfree, 1) >= 1 AND COALESCE(wfree, 1) >= 1
    ORDER BY priority DESC, created_at, position
    LIMIT :window
),
due_open AS (
    SELECT * FROM (
        SELECT t.id, t.task_name, t.created_at, t.position, t.priority, p.id AS execution_id,
               p.created_at AS queued_at, t.concurrency_key AS tk, t.rate_key AS rk,
               CASE WHEN p.admitted = 0 THEN p.concurrency_key END AS wk,
               (SELECT m.m - (SELECT count(*) FROM task_executions r
                              WHERE r.concurrency_key = m.k AND r.status = 'running'
                                AND r.map_total IS NULL)
                FROM task_max m WHERE m.k = t.concurrency_key) AS tfree,
               (SELECT free FROM tokens WHERE k = t.rate_key) AS rfree,
               CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
                   (SELECT f.m - (SELECT count(*) FROM pipeline_executions a
                                  WHERE a.concurrency_key = p.concurrency_key
                                    AND a.status = 'running' AND a.admitted = 1)
                    FROM flow_max f WHERE f.k = p.pipeline_name)
               END AS wfree
        FROM task_executions t
        CROSS JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
        WHERE t.id IN (SELECT id FROM due_tasks)
          AND p.status = 'running' AND p.claimed_by IS NULL
          AND t.pipeline_key IN (SELECT key FROM json_each(:versions))
    )
    WHERE COALESCE(tfree, 1) >= 1 AND COALESCE(rfree, 1) >= 1 AND COALESCE(wfree, 1) >= 1
    ORDER BY priority DESC, created_at, position
    LIMIT :window
),
candidates AS (SELECT * FROM ready_open UNION ALL SELECT * FROM due_open),
ranked AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY tk ORDER BY priority DESC, created_at, position) AS tr,
           row_number() OVER (PARTITION BY rk ORDER BY priority DESC, created_at, position) AS rr,
           dense_rank() OVER (PARTITION BY wk ORDER BY queued_at, execution_id) AS wr
    FROM candidates c
),
chosen AS (
    SELECT id FROM ranked
    WHERE (tfree IS NULL OR tr <= tfree)
      AND (rfree IS NULL OR rr <= CAST(rfree AS INTEGER))
      AND (wfree IS NULL OR wr <= wfree)
    ORDER BY priority DESC, created_at, position
    LIMIT :limit
)
UPDATE task_executions
SET status = 'running', attempt = attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now,
    waited = CASE WHEN status = 'waiting' AND wait_event IS NULL THEN 1 ELSE waited END,
    code_version = (SELECT value FROM json_each(:versions) WHERE key = pipeline_key)
WHERE id IN (SELECT id FROM chosen)
RETURNING *,
    (SELECT concurrency_key IS NOT NULL AND admitted = 0 FROM pipeline_executions
     WHERE id = task_executions.pipeline_execution_id) AS admits,
    0 AS booked;

-- name: flow_free
-- What one task may start with (an in-process run claims its tasks one by one): the free
-- slots of its key, the tokens of its bucket, its execution's free slots if it has none yet.
SELECT t.rate_key, t.pipeline_execution_id,
       (SELECT m.value - (SELECT count(*) FROM task_executions r
                          WHERE r.concurrency_key = m.key AND r.status = 'running'
                            AND r.map_total IS NULL)
        FROM json_each(:task_limits) m WHERE m.key = t.concurrency_key) AS tfree,
       (SELECT min(json_extract(j.value, '$[1]'),
                   b.tokens + max(0, :clock - b.counted_at) * json_extract(j.value, '$[0]'))
        FROM json_each(:rate_limits) j JOIN rate_buckets b ON b.name = j.key
        WHERE j.key = t.rate_key) AS rfree,
       CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
           (SELECT f.value - (SELECT count(*) FROM pipeline_executions a
                              WHERE a.concurrency_key = p.concurrency_key
                                AND a.status = 'running' AND a.admitted = 1)
            FROM json_each(:flow_limits) f WHERE f.key = p.pipeline_name)
       END AS wfree,
       p.admitted = 0 AND p.concurrency_key IS NOT NULL AS admits, 0 AS booked
FROM task_executions t JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
WHERE t.id = :id;

-- name: admit_executions
-- Executions whose first task was just claimed now hold a slot of their workflow's limit
-- (until they are no longer running).
UPDATE pipeline_executions SET admitted = 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND admitted = 0;

-- name: take_tokens
UPDATE rate_buckets
SET tokens = min(:capacity, tokens + max(0, :clock - counted_at) * :rate) - :count,
    counted_at = max(counted_at, :clock)
WHERE name = :name;

-- name: next_token
-- When the emptiest bucket of these next holds a whole token (epoch seconds), if any is
-- still short at :clock (a bucket full by now is no reason to look again).
SELECT min(b.counted_at + (1 - b.tokens) / json_extract(j.value, '$[0]')) AS at
FROM rate_buckets b JOIN json_each(:rate_limits) j ON j.key = b.name
WHERE b.tokens + max(0, :clock - b.counted_at) * json_extract(j.value, '$[0]') < 1;

-- Deploy-safe versions (SPEC §3.5, versions.py) -------------------------------------------------

-- name: advertise_versions
-- A worker says which definitions it serves (a JSON array of name@shape): `durably list
-- --stranded` lists what no live worker can run.
INSERT INTO worker_versions (worker_id, versions, lease, started_at, heartbeat_at)
VALUES (:worker, :versions, :lease, :now, :now)
ON CONFLICT (worker_id) DO UPDATE
SET versions = excluded.versions, lease = excluded.lease, heartbeat_at = excluded.heartbeat_at;

-- name: retire_worker
DELETE FROM worker_versions WHERE worker_id = :worker;

-- name: get_worker_versions
SELECT worker_id, versions, lease, started_at, heartbeat_at FROM worker_versions;

-- name: forget_workers
-- Advertisements of workers gone for long (they stopped without retiring).
DELETE FROM worker_versions WHERE heartbeat_at < :cutoff;

-- name: unserved_executions
-- Queued executions (nobody drives them in-process) that no definition in :served (a JSON
-- array of name@shape) can run; only of the workflow names in :names when it is not null.
SELECT * FROM pipeline_executions p
WHERE p.status = 'running' AND p.claimed_by IS NULL
  AND p.pipeline_name || '@' || COALESCE(p.pipeline_shape, p.pipeline_version)
      NOT IN (SELECT value FROM json_each(:served))
  AND (CAST(:names AS TEXT) IS NULL
       OR p.pipeline_name IN (SELECT value FROM json_each(:names)))
ORDER BY p.created_at
LIMIT :limit;
