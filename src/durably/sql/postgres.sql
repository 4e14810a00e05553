-- PostgreSQL-specific versions of shared queries (same name wins).

-- name: notify_work
-- Wake idle workers blocked in PostgresStore.wait_for_work (LISTEN durably_work). Sent at
-- commit, so a worker never wakes before the work is visible.
SELECT pg_notify('durably_work', '');

-- name: lock_execution
-- Serialize the completions of one execution, so exactly one marks a shared dependent ready.
SELECT id FROM pipeline_executions WHERE id = :id FOR UPDATE;

-- name: claim_tasks
-- SKIP LOCKED: concurrent workers each take a different ready row without waiting. Ready
-- rows and due rows are read apart, each in claim order, then merged. The ready rows are
-- walked in the task_executions_claim index's order (which leaves out rows awaiting a
-- retry), so a claim reads about :limit rows however many are ready or retrying later, and
-- whatever the planner's statistics say: the claim's transaction turns bitmap scans off
-- (PostgresStore, keyed=True), the only plan that could sort the whole ready set
-- instead, and each row's execution is looked up by its key in a subquery the planner
-- cannot turn into a join that starts from the executions.
-- Each claimed row comes back with its execution's row (as JSON), and a root task's (by
-- :roots, the claimable definitions' tasks without dependencies) with its initial context:
-- what the worker would otherwise read in a second statement. A scalar subquery, so it is
-- looked up by key per claimed row, never a join the planner could start from a whole table.
WITH ready AS (
    SELECT t.id, t.priority, t.created_at, t.position FROM task_executions t
    WHERE t.status = 'ready' AND t.retry_at IS NULL
      AND CAST(:versions AS jsonb) ? t.pipeline_key
      AND (t.flow_limited = 0 OR NOT CAST(:limited AS jsonb) ? t.pipeline_key)
      AND (SELECT p.status = 'running' AND p.claimed_by IS NULL FROM pipeline_executions p
           WHERE p.id = t.pipeline_execution_id)
    ORDER BY t.priority DESC, t.created_at, t.position
    LIMIT :limit
    FOR UPDATE OF t SKIP LOCKED
),
-- Due rows: waiting ones whose time came and ready ones whose retry is due, each found
-- through its index by time. Their lock re-reads why each is due: a row another worker
-- claimed and put back to wait meanwhile is not due again.
due_tasks AS (
    SELECT id FROM task_executions
    WHERE status = 'waiting' AND wake_at <= CAST(:now AS timestamptz)
    UNION ALL
    SELECT id FROM task_executions
    WHERE status = 'ready' AND retry_at <= CAST(:now AS timestamptz)
),
due AS (
    SELECT t.id, t.priority, t.created_at, t.position FROM task_executions t
    WHERE t.id IN (SELECT id FROM due_tasks)
      AND (t.status = 'waiting' AND t.wake_at <= CAST(:now AS timestamptz)
           OR t.status = 'ready' AND t.retry_at <= CAST(:now AS timestamptz))
      AND CAST(:versions AS jsonb) ? t.pipeline_key
      AND (t.flow_limited = 0 OR NOT CAST(:limited AS jsonb) ? t.pipeline_key)
      AND (SELECT p.status = 'running' AND p.claimed_by IS NULL FROM pipeline_executions p
           WHERE p.id = t.pipeline_execution_id)
    ORDER BY t.priority DESC, t.created_at, t.position
    LIMIT :limit
    FOR UPDATE OF t SKIP LOCKED
),
chosen AS (
    SELECT id FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) found
    ORDER BY priority DESC, created_at, position
    LIMIT :limit
)
UPDATE task_executions c
SET status = 'running', attempt = c.attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now,
    waited = CASE WHEN c.status = 'waiting' AND c.wait_event IS NULL THEN 1 ELSE c.waited END,
    code_version = CAST(:versions AS jsonb) ->> c.pipeline_key
FROM chosen h
WHERE c.id = h.id
RETURNING c.*,
    (SELECT to_jsonb(p)
            || jsonb_build_object('initial_context', i.value, 'initial_base', i.base_id)
     FROM pipeline_executions p LEFT JOIN contexts i ON i.id = p.context_id
         AND CAST(:roots AS jsonb) -> c.pipeline_key ? coalesce(c.map_parent, c.task_name)
     WHERE p.id = c.pipeline_execution_id) AS execution;

-- name: get_task_states
-- The named tasks of an execution (a JSON array of names): one query, however many.
SELECT *
FROM task_executions
WHERE pipeline_execution_id = :id
  AND task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)));

-- name: get_task_states_waiting
-- LIMIT keeps each look-up a subquery run per name (a nested loop in the names' order, which
-- stops at the first unfinished one), instead of a join that reads every dependency.
SELECT t.*, (
    SELECT EXISTS (
        SELECT 1 FROM jsonb_array_elements_text(w.value -> 1) AS n(name)
        CROSS JOIN LATERAL (
            SELECT 1 FROM task_executions u
            WHERE u.pipeline_execution_id = t.pipeline_execution_id AND u.task_name = n.name
              AND u.status <> ALL (
                  ARRAY(SELECT jsonb_array_elements_text(CAST(:terminal AS jsonb)))
              )
            LIMIT 1
        ) open
    )
    FROM jsonb_array_elements(CAST(:waits AS jsonb)) AS w(value)
    WHERE w.value ->> 0 = t.task_name
) AS unfinished
FROM task_executions t
WHERE t.pipeline_execution_id = :id
  AND t.task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)));

-- name: get_named_outputs
SELECT m.task_name, c.id, c.value, c.base_id, b.value AS base_value, b.base_id AS base_base_id
FROM task_execution_metadata m
JOIN contexts c ON c.id = m.context_id
LEFT JOIN contexts b ON b.id = c.base_id
WHERE m.pipeline_execution_id = :id
  AND m.task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)));

-- name: mark_ready
UPDATE task_executions SET status = 'ready', updated_at = :now
WHERE id = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(:ids AS jsonb)) AS uuid)))
  AND status = 'not_started';

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
    finished_at, worker, error, logs, code_version
)
SELECT CAST(:attempt_id AS uuid), id, pipeline_execution_id, task_name, attempt, status,
       started_at, COALESCE(completed_at, CAST(:now AS timestamptz)), claimed_by, error_details,
       logs, code_version
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
SELECT id, task_name, task_configuration, received, map_parent,
       (SELECT g.value FROM pipeline_executions p
        JOIN task_configurations g ON g.id = p.configuration_id WHERE p.id = :id) AS configurations
FROM task_executions
WHERE pipeline_execution_id = :id AND status = 'waiting' AND wait_event = :name
ORDER BY position
LIMIT 1
FOR UPDATE;

-- Flow control ----------------------------------------------------------------------------------

-- name: lock_flow
-- One transaction lock per limited key, taken in the order of their hashes by every claimer
-- (so two never deadlock): the claim statement that follows then counts what runs with no
-- other claim of those keys in flight. The two travel in one round trip (Tx.fetch_batch,
-- pipeline mode), but the server starts the claim, and takes its READ COMMITTED snapshot,
-- only once this one has returned with the locks held. Completions take no lock: they only
-- free slots. The buckets it may take tokens from are created first (a new one is full).
WITH ensured AS (
    INSERT INTO rate_buckets (name, tokens, counted_at)
    SELECT key, CAST(value ->> 1 AS double precision), CAST(:clock AS double precision)
    FROM jsonb_each(CAST(:rate_limits AS jsonb))
    ON CONFLICT (name) DO NOTHING
)
SELECT count(*) AS n FROM (
    SELECT pg_advisory_xact_lock(1685418593, h) FROM (
        SELECT DISTINCT hashtext(value) AS h
        FROM jsonb_array_elements_text(CAST(:locks AS jsonb))
        ORDER BY h
    ) keys
) locked;

-- name: claim_limited_tasks
-- As SQLite's, with SKIP LOCKED on the task rows and on the executions it admits (never
-- waiting for a lock another transaction holds there), and the admissions and the tokens
-- written by the same statement (booked = 1). Its candidates are read as claim_tasks reads
-- its own: in index order, each task's execution looked up by key. OFFSET 0 keeps that
-- lateral subquery from being flattened into a join the planner may start from the other
-- side, and the filter on the execution's status out of it: by key is then its only plan
-- (with statistics from before the queue filled, it took the index of running executions
-- and read them all for each candidate). Its due rows are claim_tasks' (due_tasks).
WITH
due_tasks AS (
    SELECT id FROM task_executions
    WHERE status = 'waiting' AND wake_at <= CAST(:now AS timestamptz)
    UNION ALL
    SELECT id FROM task_executions
    WHERE status = 'ready' AND retry_at <= CAST(:now AS timestamptz)
),
task_max AS (
    SELECT key AS k, CAST(value AS integer) AS m
    FROM jsonb_each_text(CAST(:task_limits AS jsonb))
),
flow_max AS (
    SELECT key AS k, CAST(value AS integer) AS m
    FROM jsonb_each_text(CAST(:flow_limits AS jsonb))
),
rates AS (
    SELECT key AS k, CAST(value ->> 0 AS double precision) AS rate,
           CAST(value ->> 1 AS double precision) AS cap
    FROM jsonb_each(CAST(:rate_limits AS jsonb))
),
tokens AS MATERIALIZED (
    SELECT r.k, r.rate, r.cap,
           LEAST(r.cap, b.tokens
                 + GREATEST(0, CAST(:clock AS double precision) - b.counted_at) * r.rate) AS free
    FROM rates r JOIN rate_buckets b ON b.name = r.k
),
task_free AS MATERIALIZED (
    SELECT m.k, m.m - (SELECT count(*) FROM task_executions r
                       WHERE r.concurrency_key = m.k AND r.status = 'running'
                         AND r.map_total IS NULL) AS free
    FROM task_max m
),
-- How many more executions may start under each key that has some running (a key with none
-- running has its workflow's max).
flow_free AS MATERIALIZED (
    SELECT a.concurrency_key AS k, f.m - count(*) AS free
    FROM pipeline_executions a JOIN flow_max f ON f.k = a.pipeline_name
    WHERE a.status = 'running' AND a.admitted = 1 AND a.concurrency_key IS NOT NULL
    GROUP BY a.concurrency_key, f.m
),
ready_open AS MATERIALIZED (
    SELECT t.id, t.created_at, t.position, t.priority, p.id AS execution_id,
           p.created_at AS queued_at, t.concurrency_key AS tk, t.rate_key AS rk,
           CASE WHEN p.admitted = 0 THEN p.concurrency_key END AS wk,
           (SELECT free FROM task_free WHERE k = t.concurrency_key) AS tfree,
           (SELECT free FROM tokens WHERE k = t.rate_key) AS rfree,
           CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
               COALESCE((SELECT free FROM flow_free WHERE k = p.concurrency_key),
                        (SELECT m FROM flow_max WHERE k = p.pipeline_name))
           END AS wfree
    FROM task_executions t
    CROSS JOIN LATERAL (
        SELECT e.id, e.created_at, e.admitted, e.concurrency_key, e.pipeline_name, e.status,
               e.claimed_by
        FROM pipeline_executions e WHERE e.id = t.pipeline_execution_id
        OFFSET 0
    ) p
    WHERE t.status = 'ready' AND t.flow_limited = 1 AND t.retry_at IS NULL
      AND p.status = 'running' AND p.claimed_by IS NULL
      AND CAST(:versions AS jsonb) ? t.pipeline_key
      AND COALESCE((SELECT free FROM task_free WHERE k = t.concurrency_key), 1) >= 1
      AND COALESCE((SELECT free FROM tokens WHERE k = t.rate_key), 1) >= 1
      AND (p.admitted = 1 OR p.concurrency_key IS NULL
           OR COALESCE((SELECT free FROM flow_free WHERE k = p.concurrency_key),
                       (SELECT m FROM flow_max WHERE k = p.pipeline_name), 1) >= 1)
    ORDER BY t.priority DESC, t.created_at, t.position
    LIMIT :window
    FOR UPDATE OF t SKIP LOCKED
),
due_open AS MATERIALIZED (
    SELECT t.id, t.created_at, t.position, t.priority, p.id AS execution_id,
           p.created_at AS queued_at, t.concurrency_key AS tk, t.rate_key AS rk,
           CASE WHEN p.admitted = 0 THEN p.concurrency_key END AS wk,
           (SELECT free FROM task_free WHERE k = t.concurrency_key) AS tfree,
           (SELECT free FROM tokens WHERE k = t.rate_key) AS rfree,
           CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
               COALESCE((SELECT free FROM flow_free WHERE k = p.concurrency_key),
                        (SELECT m FROM flow_max WHERE k = p.pipeline_name))
           END AS wfree
    FROM task_executions t
    CROSS JOIN LATERAL (
        SELECT e.id, e.created_at, e.admitted, e.concurrency_key, e.pipeline_name, e.status,
               e.claimed_by
        FROM pipeline_executions e WHERE e.id = t.pipeline_execution_id
        OFFSET 0
    ) p
    WHERE t.id IN (SELECT id FROM due_tasks)
      AND (t.status = 'waiting' AND t.wake_at <= CAST(:now AS timestamptz)
           OR t.status = 'ready' AND t.retry_at <= CAST(:now AS timestamptz))
      AND p.status = 'running' AND p.claimed_by IS NULL
      AND CAST(:versions AS jsonb) ? t.pipeline_key
      AND COALESCE((SELECT free FROM task_free WHERE k = t.concurrency_key), 1) >= 1
      AND COALESCE((SELECT free FROM tokens WHERE k = t.rate_key), 1) >= 1
      AND (p.admitted = 1 OR p.concurrency_key IS NULL
           OR COALESCE((SELECT free FROM flow_free WHERE k = p.concurrency_key),
                       (SELECT m FROM flow_max WHERE k = p.pipeline_name), 1) >= 1)
    ORDER BY t.priority DESC, t.created_at, t.position
    LIMIT :window
    FOR UPDATE OF t SKIP LOCKED
),
candidates AS (SELECT * FROM ready_open UNION ALL SELECT * FROM due_open),
admissible AS MATERIALIZED (
    SELECT id FROM pipeline_executions
    WHERE id IN (SELECT execution_id FROM candidates WHERE wk IS NOT NULL AND wfree >= 1)
    FOR UPDATE SKIP LOCKED
),
ranked AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY tk ORDER BY priority DESC, created_at, position) AS tr,
           row_number() OVER (PARTITION BY rk ORDER BY priority DESC, created_at, position) AS rr,
           dense_rank() OVER (PARTITION BY wk ORDER BY queued_at, execution_id) AS wr
    FROM candidates c
    WHERE c.wfree IS NULL OR c.execution_id IN (SELECT id FROM admissible)
),
chosen AS MATERIALIZED (
    SELECT id, execution_id, rk, wk FROM ranked
    WHERE (tfree IS NULL OR tr <= tfree)
      AND (rfree IS NULL OR rr <= floor(rfree))
      AND (wfree IS NULL OR wr <= wfree)
    ORDER BY priority DESC, created_at, position
    LIMIT :limit
),
admitted AS (
    UPDATE pipeline_executions SET admitted = 1
    WHERE id IN (SELECT execution_id FROM chosen WHERE wk IS NOT NULL) AND admitted = 0
),
spent AS (
    UPDATE rate_buckets b
    SET tokens = t.free - u.n,
        counted_at = GREATEST(b.counted_at, CAST(:clock AS double precision))
    FROM (SELECT rk, count(*) AS n FROM chosen WHERE rk IS NOT NULL GROUP BY rk) u, tokens t
    WHERE b.name = u.rk AND t.k = u.rk
)
UPDATE task_executions c
SET status = 'running', attempt = c.attempt + 1, claimed_by = :worker, heartbeat_at = :now,
    started_at = :now, retry_at = NULL, updated_at = :now,
    waited = CASE WHEN c.status = 'waiting' AND c.wait_event IS NULL THEN 1 ELSE c.waited END,
    code_version = CAST(:versions AS jsonb) ->> c.pipeline_key
FROM chosen h
WHERE c.id = h.id
-- With each row's execution and a root task's initial context, as claim_tasks reads them
-- (the execution's admitted is the one before this statement: nothing reads it).
RETURNING c.*, h.wk IS NOT NULL AS admits, 1 AS booked,
    (SELECT to_jsonb(p)
            || jsonb_build_object('initial_context', i.value, 'initial_base', i.base_id)
     FROM pipeline_executions p LEFT JOIN contexts i ON i.id = p.context_id
         AND CAST(:roots AS jsonb) -> c.pipeline_key ? coalesce(c.map_parent, c.task_name)
     WHERE p.id = c.pipeline_execution_id) AS execution;

-- name: flow_free
SELECT t.rate_key, t.pipeline_execution_id,
       (SELECT CAST(m.value AS integer) - (SELECT count(*) FROM task_executions r
                                           WHERE r.concurrency_key = m.key
                                             AND r.status = 'running' AND r.map_total IS NULL)
        FROM jsonb_each_text(CAST(:task_limits AS jsonb)) m
        WHERE m.key = t.concurrency_key) AS tfree,
       (SELECT LEAST(CAST(j.value ->> 1 AS double precision),
                     b.tokens + GREATEST(0, CAST(:clock AS double precision) - b.counted_at)
                     * CAST(j.value ->> 0 AS double precision))
        FROM jsonb_each(CAST(:rate_limits AS jsonb)) j JOIN rate_buckets b ON b.name = j.key
        WHERE j.key = t.rate_key) AS rfree,
       CASE WHEN p.admitted = 0 AND p.concurrency_key IS NOT NULL THEN
           (SELECT CAST(f.value AS integer) - (SELECT count(*) FROM pipeline_executions a
                                               WHERE a.concurrency_key = p.concurrency_key
                                                 AND a.status = 'running' AND a.admitted = 1)
            FROM jsonb_each_text(CAST(:flow_limits AS jsonb)) f WHERE f.key = p.pipeline_name)
       END AS wfree,
       p.admitted = 0 AND p.concurrency_key IS NOT NULL AS admits, 0 AS booked
FROM task_executions t JOIN pipeline_executions p ON p.id = t.pipeline_execution_id
WHERE t.id = :id;

-- name: admit_executions
UPDATE pipeline_executions SET admitted = 1
WHERE id IN (SELECT CAST(value AS uuid) FROM jsonb_array_elements_text(CAST(:ids AS jsonb)))
  AND admitted = 0;

-- name: take_tokens
UPDATE rate_buckets
SET tokens = LEAST(CAST(:capacity AS double precision),
                   tokens + GREATEST(0, CAST(:clock AS double precision) - counted_at)
                   * CAST(:rate AS double precision)) - :count,
    counted_at = GREATEST(counted_at, CAST(:clock AS double precision))
WHERE name = :name;

-- name: next_token
SELECT min(b.counted_at + (1 - b.tokens) / CAST(j.value ->> 0 AS double precision)) AS at
FROM rate_buckets b JOIN jsonb_each(CAST(:rate_limits AS jsonb)) j ON j.key = b.name
WHERE b.tokens + GREATEST(0, CAST(:clock AS double precision) - b.counted_at)
      * CAST(j.value ->> 0 AS double precision) < 1;

-- name: unserved_executions
SELECT * FROM pipeline_executions p
WHERE p.status = 'running' AND p.claimed_by IS NULL
  AND p.pipeline_name || '@' || COALESCE(p.pipeline_shape, p.pipeline_version)
      NOT IN (SELECT jsonb_array_elements_text(CAST(:served AS jsonb)))
  AND (CAST(:names AS TEXT) IS NULL
       OR p.pipeline_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb))))
ORDER BY p.created_at
LIMIT :limit;

-- Contexts ------------------------------------------------------------------------------------
-- The shared versions insert from a SELECT, whose parameters PostgreSQL does not type from the
-- target columns.

-- name: insert_context_delta
INSERT INTO contexts (id, value, base_id, created_at)
SELECT CAST(:id AS uuid), CASE WHEN b.id IS NULL THEN :full ELSE :value END, b.id,
       CAST(:now AS timestamptz)
FROM (SELECT 1 AS one) o
LEFT JOIN contexts b ON b.id = CAST(:base_id AS uuid) AND b.base_id IS NULL;

-- name: link_saved_output
INSERT INTO task_execution_metadata (
    id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at
)
SELECT CAST(:id AS uuid), CAST(:task_id AS uuid), CAST(:execution_id AS uuid), :name,
       CAST(:context_id AS uuid), CAST(:now AS timestamptz)
WHERE EXISTS (SELECT 1 FROM contexts c WHERE c.id = CAST(:context_id AS uuid))
ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
    updated_at = excluded.created_at;

-- name: start_execution
-- A start's writes as one statement (Tx.combined): the initial context, the execution and
-- its task rows (:tasks, a JSON array of insert_task's parameters, one object a task), then
-- the wake-up of idle workers when :notify. Alone in its transaction it needs no BEGIN and
-- no COMMIT: a single statement commits as a whole or not at all.
WITH context AS (
    INSERT INTO contexts (id, value, created_at)
    VALUES (CAST(:context_id AS uuid), :value, CAST(:now AS timestamptz))
),
execution AS (
    INSERT INTO pipeline_executions (
        id, pipeline_name, pipeline_version, pipeline_shape, status, context_id, started_at,
        claimed_by, heartbeat_at, parent_execution_id, parent_task, priority,
        concurrency_key, configuration_id, created_at, updated_at
    ) VALUES (
        CAST(:id AS uuid), :name, :version, :shape, :status, CAST(:context_id AS uuid),
        CAST(:now AS timestamptz), :claimed_by, CAST(:now AS timestamptz),
        CAST(:parent_id AS uuid), :parent_task, :priority, :concurrency_key,
        :configuration_id, CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    )
),
tasks AS (
    INSERT INTO task_executions (
        id, pipeline_execution_id, task_name, position, status, attempt, max_attempts,
        task_configuration, started_at, completed_at, concurrency_key,
        rate_key, priority, flow_limited, pipeline_key, created_at, updated_at
    )
    SELECT CAST(t ->> 'id' AS uuid), CAST(:id AS uuid), t ->> 'name',
           CAST(t ->> 'position' AS integer), t ->> 'status', CAST(t ->> 'attempt' AS integer),
           CAST(t ->> 'max_attempts' AS integer),
           CAST(t ->> 'configuration' AS jsonb), CAST(t ->> 'started_at' AS timestamptz),
           CAST(t ->> 'completed_at' AS timestamptz), t ->> 'concurrency_key',
           t ->> 'rate_key', :priority, CAST(t ->> 'flow_limited' AS integer),
           t ->> 'pipeline_key', CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM jsonb_array_elements(CAST(:tasks AS jsonb)) AS t
)
SELECT pg_notify('durably_work', '') WHERE CAST(:notify AS boolean);

-- name: complete_with_output
-- complete_task and the output it saves as one statement (Tx.combined): nothing is written
-- unless the task row is completed here (the claim's fence). The output is linked to the
-- row saved before that holds the same text (:saved_id) if that row exists, else to a new
-- row (:context_id) holding :value, a delta on :base_id if that full row exists, or :full
-- (as insert_context_delta). completed: 1 when the claim held, reused: the saved row exists.
-- With :names (else an empty JSON array), the reads around the task as well, as
-- get_task_states_waiting's (:waits, :terminal): they see what the statements before this one
-- wrote, as when sent before it (the task's own row is not read: the claim knows it). One
-- row a task read, each with the answer, or the answer alone when none is read.
WITH done AS (
    UPDATE task_executions
    SET status = 'completed', completed_at = CAST(:now AS timestamptz), error_details = NULL,
        logs = :logs, updated_at = CAST(:now AS timestamptz)
    WHERE id = CAST(:task_id AS uuid) AND status = 'running' AND claimed_by = :worker
      AND attempt = :attempt
    RETURNING id
),
saved AS (SELECT c.id FROM contexts c WHERE c.id = CAST(:saved_id AS uuid)),
base AS (
    SELECT b.id FROM contexts b WHERE b.id = CAST(:base_id AS uuid) AND b.base_id IS NULL
),
context AS (
    INSERT INTO contexts (id, value, base_id, created_at)
    SELECT CAST(:context_id AS uuid), CASE WHEN base.id IS NULL THEN :full ELSE :value END,
           base.id, CAST(:now AS timestamptz)
    FROM done LEFT JOIN base ON true
    WHERE NOT EXISTS (SELECT 1 FROM saved)
),
link AS (
    INSERT INTO task_execution_metadata (
        id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at
    )
    SELECT CAST(:link_id AS uuid), done.id, CAST(:execution_id AS uuid), :name,
           COALESCE((SELECT id FROM saved), CAST(:context_id AS uuid)),
           CAST(:now AS timestamptz)
    FROM done
    ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
    SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
        updated_at = excluded.created_at
),
answer AS (
    SELECT (SELECT count(*) FROM done) AS completed, (SELECT count(*) FROM saved) AS reused
),
around AS (
    SELECT t.*, (
        SELECT EXISTS (
            SELECT 1 FROM jsonb_array_elements_text(w.value -> 1) AS n(name)
            CROSS JOIN LATERAL (
                SELECT 1 FROM task_executions u
                WHERE u.pipeline_execution_id = t.pipeline_execution_id
                  AND u.task_name = n.name
                  AND u.status <> ALL (
                      ARRAY(SELECT jsonb_array_elements_text(CAST(:terminal AS jsonb)))
                  )
                LIMIT 1
            ) open
        )
        FROM jsonb_array_elements(CAST(:waits AS jsonb)) AS w(value)
        WHERE w.value ->> 0 = t.task_name
    ) AS unfinished
    FROM task_executions t
    WHERE t.pipeline_execution_id = CAST(:execution_id AS uuid)
      AND t.task_name IN (SELECT jsonb_array_elements_text(CAST(:names AS jsonb)))
)
SELECT answer.completed, answer.reused, around.*
FROM answer LEFT JOIN around ON true;

-- name: complete_lone_tasks
-- complete_with_output, then the end of its execution, for a batch of single-task executions
-- as one statement (Tx.combined). :items is a JSON array of complete_with_output's
-- parameters, one object an attempt. Each item is fenced on its own claim, as one by one:
-- nothing of an item is written unless its task row is completed here, and then its
-- execution completes with that output for its final context (a lone task's output is the
-- final context). One row an item, in their order: completed and reused as
-- complete_with_output's. The rows are found through ANY (ARRAY(...)), an index look-up
-- each: joined to the items alone, the planner hashes a scan of the whole table instead,
-- and an execution's status test is written IS TRUE so that no status index can serve it.
-- An execution row takes its values from a subquery, not a join on its id: planned while
-- the table was small, that join's look-up walked an index of the list's (which holds the
-- id too) and kept doing so as it grew.
WITH item AS (
    SELECT a.n, CAST(a.i ->> 'task_id' AS uuid) AS task_id,
           CAST(a.i ->> 'execution_id' AS uuid) AS execution_id, a.i ->> 'name' AS name,
           a.i ->> 'worker' AS worker, CAST(a.i ->> 'attempt' AS integer) AS attempt,
           a.i ->> 'logs' AS logs, CAST(a.i ->> 'now' AS timestamptz) AS at,
           CAST(a.i ->> 'link_id' AS uuid) AS link_id,
           CAST(a.i ->> 'context_id' AS uuid) AS context_id,
           CAST(a.i ->> 'saved_id' AS uuid) AS saved_id,
           CAST(a.i ->> 'base_id' AS uuid) AS base_id, a.i ->> 'value' AS value,
           a.i ->> 'full' AS full_text
    FROM jsonb_array_elements(CAST(:items AS jsonb)) WITH ORDINALITY AS a(i, n)
),
done AS (
    UPDATE task_executions t
    SET status = 'completed', completed_at = i.at, error_details = NULL, logs = i.logs,
        updated_at = i.at
    FROM item i
    WHERE t.id = ANY (ARRAY(SELECT task_id FROM item)) AND t.id = i.task_id
      AND t.status = 'running' AND t.claimed_by = i.worker AND t.attempt = i.attempt
    RETURNING t.id
),
kept AS (
    SELECT i.*, s.id AS saved, b.id AS base
    FROM item i
    JOIN done d ON d.id = i.task_id
    LEFT JOIN contexts s ON s.id = i.saved_id
    LEFT JOIN contexts b ON b.id = i.base_id AND b.base_id IS NULL
),
context AS (
    INSERT INTO contexts (id, value, base_id, created_at)
    SELECT k.context_id, CASE WHEN k.base IS NULL THEN k.full_text ELSE k.value END, k.base,
           k.at
    FROM kept k
    WHERE k.saved IS NULL
),
link AS (
    INSERT INTO task_execution_metadata (
        id, task_execution_id, pipeline_execution_id, task_name, context_id, created_at
    )
    SELECT k.link_id, k.task_id, k.execution_id, k.name, COALESCE(k.saved, k.context_id), k.at
    FROM kept k
    ON CONFLICT (pipeline_execution_id, task_name) DO UPDATE
    SET task_execution_id = excluded.task_execution_id, context_id = excluded.context_id,
        updated_at = excluded.created_at
),
finished AS (
    UPDATE pipeline_executions p
    SET status = 'completed', error_details = NULL, claimed_by = NULL,
        (final_context_id, completed_at, updated_at) = (
            SELECT COALESCE(k.saved, k.context_id), k.at, k.at FROM kept k
            WHERE k.execution_id = p.id
        )
    WHERE p.id = ANY (ARRAY(SELECT execution_id FROM kept))
      AND (p.status IN ('pending', 'running')) IS TRUE
)
SELECT k.task_id IS NOT NULL AS completed, k.saved IS NOT NULL AS reused
FROM item i
LEFT JOIN kept k ON k.n = i.n
ORDER BY i.n;

-- name: finish_with_fallback
-- save_final_fallback and finish_execution as one statement (Tx.combined): the final
-- context is the row saved before (:context_id) if it exists, else a full copy under
-- :fallback_id.
WITH fallback AS (
    INSERT INTO contexts (id, value, created_at)
    SELECT CAST(:fallback_id AS uuid), :final, CAST(:now AS timestamptz)
    WHERE NOT EXISTS (SELECT 1 FROM contexts c WHERE c.id = CAST(:context_id AS uuid))
    RETURNING id
)
UPDATE pipeline_executions
SET status = :status,
    final_context_id = COALESCE((SELECT id FROM fallback), CAST(:context_id AS uuid)),
    completed_at = CAST(:now AS timestamptz), error_details = :error, claimed_by = NULL,
    updated_at = CAST(:now AS timestamptz)
WHERE id = CAST(:id AS uuid) AND status IN ('pending', 'running');

-- name: get_executions
SELECT p.*, c.value AS initial_context, c.base_id AS initial_base
FROM pipeline_executions p
LEFT JOIN contexts c
    ON c.id = p.context_id
   AND p.id = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(:with_context AS jsonb))
                                     AS uuid)))
WHERE p.id = ANY (ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(:ids AS jsonb)) AS uuid)));
