-- SQLite-specific versions of shared queries (same name wins).


-- The counts name their index: SQLite's planner, once ANALYZE has run, prefers walking
-- pipeline_executions_status (in GROUP BY order) with a table lookup per row, to filter by
-- name or time. The covering index reads no table row: four to ten times faster at
-- 100,000 executions (tests/test_dashboard_scale.py).

-- name: count_executions
SELECT status, COUNT(*) AS n FROM pipeline_executions INDEXED BY pipeline_executions_status
WHERE created_at >= :since AND created_at < :until
GROUP BY status;

-- name: count_executions_of_workflow
SELECT status, COUNT(*) AS n FROM pipeline_executions INDEXED BY pipeline_executions_name
WHERE pipeline_name = :workflow AND created_at >= :since AND created_at < :until
GROUP BY status;

-- name: saga_count_executions
SELECT status, COUNT(*) AS n FROM saga_executions INDEXED BY saga_executions_status
WHERE created_at >= :since AND created_at < :until
GROUP BY status;

-- name: saga_count_executions_of_name
SELECT status, COUNT(*) AS n FROM saga_executions INDEXED BY saga_executions_name
WHERE saga_name = :workflow AND created_at >= :since AND created_at < :until
GROUP BY status;
