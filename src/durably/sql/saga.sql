-- Saga executions: named queries shared by every dialect (see __init__.py).
-- Times are ISO-8601 UTC text from Python; ids are UUID text; state is JSON text.

-- name: saga_save_context
INSERT INTO contexts (id, value, created_at, updated_at) VALUES (:id, :value, :now, :now)
ON CONFLICT (id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: saga_save_execution
INSERT INTO saga_executions (
    id, saga_name, fingerprint, status, context_id, state, error_details, created_at, updated_at
) VALUES (
    :id, :saga_name, :fingerprint, :status, :context_id, :state, :error_details, :created_at, :now
)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status,
    state = excluded.state,
    error_details = excluded.error_details,
    updated_at = excluded.updated_at;

-- A reply is applied once: the step it resumes is saved in the same transaction, and a second
-- insert of its key changes no row.
-- name: saga_insert_reply
INSERT INTO saga_replies (saga_execution_id, idempotency_key, created_at)
VALUES (:id, :key, :now)
ON CONFLICT DO NOTHING;

-- name: saga_get_execution
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
WHERE e.id = :id;

-- name: saga_list_executions
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
ORDER BY e.created_at DESC, e.id
LIMIT :limit;

-- name: saga_list_executions_by_status
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
WHERE e.status = :status
ORDER BY e.created_at DESC, e.id
LIMIT :limit;

-- name: saga_delete_replies
DELETE FROM saga_replies WHERE saga_execution_id = :id;

-- name: saga_delete_execution
DELETE FROM saga_executions WHERE id = :id;

-- name: saga_delete_context
DELETE FROM contexts WHERE id = :id;
