-- 0010: lists that read one page, not the table (the dashboard, durably list). Executions of
-- each kind are listed newest first by (created_at, id), after a keyset cursor: with no
-- filter, by status, by name, or by idempotency key, each walks one of these indexes.

DROP INDEX pipeline_executions_status;
CREATE INDEX pipeline_executions_status ON pipeline_executions (status, created_at, id);
CREATE INDEX pipeline_executions_created ON pipeline_executions (created_at, id);
CREATE INDEX pipeline_executions_name ON pipeline_executions (pipeline_name, created_at, id, status);
CREATE INDEX pipeline_executions_idempotency_key ON pipeline_executions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX saga_executions_status;
CREATE INDEX saga_executions_status ON saga_executions (status, created_at, id);
CREATE INDEX saga_executions_created ON saga_executions (created_at, id);
CREATE INDEX saga_executions_name ON saga_executions (saga_name, created_at, id, status);
