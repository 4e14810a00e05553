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

-- Lists, newest first, one page after a keyset cursor (durably.listing), each walking one
-- index in (created_at, id) order: saga_executions_created, saga_executions_status or
-- saga_executions_name.

-- name: saga_list_executions
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
WHERE (e.created_at, e.id) < (:before_at, :before_id) AND e.created_at >= :since
ORDER BY e.created_at DESC, e.id DESC
LIMIT :limit;

-- name: saga_list_executions_by_status
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
WHERE e.status = :status
  AND (e.created_at, e.id) < (:before_at, :before_id) AND e.created_at >= :since
ORDER BY e.created_at DESC, e.id DESC
LIMIT :limit;

-- name: saga_list_executions_by_name
SELECT e.id, e.saga_name, e.fingerprint, e.status, e.context_id, e.state, e.error_details,
       e.created_at, e.updated_at, c.value AS context
FROM saga_executions e JOIN contexts c ON c.id = e.context_id
WHERE e.saga_name = :workflow
  AND (e.created_at, e.id) < (:before_at, :before_id) AND e.created_at >= :since
  AND (CAST(:status AS TEXT) IS NULL OR e.status = CAST(:status AS TEXT))
ORDER BY e.created_at DESC, e.id DESC
LIMIT :limit;

-- name: saga_count_executions
SELECT status, COUNT(*) AS n FROM saga_executions
WHERE created_at >= :since AND created_at < :until
GROUP BY status;

-- name: saga_count_executions_of_name
SELECT status, COUNT(*) AS n FROM saga_executions
WHERE saga_name = :workflow AND created_at >= :since AND created_at < :until
GROUP BY status;

-- name: saga_delete_replies
DELETE FROM saga_replies WHERE saga_execution_id = :id;

-- name: saga_delete_execution
DELETE FROM saga_executions WHERE id = :id;

-- name: saga_delete_context
DELETE FROM contexts WHERE id = :id;

-- name: saga_delete_outbox
DELETE FROM saga_outbox WHERE saga_execution_id = :id;

-- The outbox (see saga_outbox.py). A row is written with the save that pauses its step, owned
-- by the relay of the manager that wrote it for a lease; another relay takes it only once the
-- lease has run out (its writer is gone).
-- name: saga_outbox_insert
INSERT INTO saga_outbox (
    id, saga_execution_id, idempotency_key, topic, body, headers, fallback_reply_to, creator,
    claimed_by, lease_until, attempts, next_attempt_at, created_at
) VALUES (
    :id, :saga_execution_id, :idempotency_key, :topic, :body, :headers, :fallback_reply_to,
    :creator, :creator, :lease_until, 0, :now, :now
);

-- name: saga_outbox_due
SELECT id, saga_execution_id, idempotency_key, topic, body, headers, fallback_reply_to,
       creator, attempts
FROM saga_outbox
WHERE next_attempt_at <= :now AND (claimed_by = :me OR lease_until < :now)
ORDER BY created_at, id
LIMIT :limit;

-- name: saga_outbox_get
SELECT id, saga_execution_id, idempotency_key, topic, body, headers, fallback_reply_to,
       creator, attempts
FROM saga_outbox WHERE id = :id;

-- name: saga_outbox_claim
UPDATE saga_outbox SET claimed_by = :me, lease_until = :lease_until
WHERE id = :id AND (claimed_by = :me OR lease_until < :now);

-- name: saga_outbox_published
DELETE FROM saga_outbox WHERE id = :id;

-- name: saga_outbox_retry
UPDATE saga_outbox
SET attempts = attempts + 1, next_attempt_at = :next_attempt_at, lease_until = :lease_until,
    last_error = :error
WHERE id = :id AND claimed_by = :me;

-- name: saga_outbox_discard
DELETE FROM saga_outbox WHERE saga_execution_id = :id AND idempotency_key = :key;

-- name: saga_outbox_count
SELECT count(*) AS n FROM saga_outbox WHERE saga_execution_id = :id;

-- name: saga_outbox_owned
SELECT count(*) AS n FROM saga_outbox WHERE claimed_by = :me;

-- A participant's answered requests (saga_inbox.py).
-- name: saga_inbox_get
SELECT status, body FROM saga_inbox WHERE target = :target AND idempotency_key = :key;

-- name: saga_inbox_put
INSERT INTO saga_inbox (target, idempotency_key, status, body, created_at)
VALUES (:target, :key, :reply_status, :body, :now)
ON CONFLICT DO NOTHING;
