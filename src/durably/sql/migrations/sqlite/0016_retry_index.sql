-- 0016: a ready row awaiting its retry (retry_at set) leaves the claims' indexes of ready rows
-- for one of its own, by retry time. The claims walked those rows and skipped them one by one:
-- a claim of 10 took 3 ms with none and 27 ms with 50,000 awaiting a retry. They now read
-- the due ones through task_executions_retrying, as they read due waiting rows.

DROP INDEX task_executions_claim;
CREATE INDEX task_executions_claim
    ON task_executions (priority DESC, created_at, position, pipeline_key)
    WHERE status = 'ready' AND retry_at IS NULL;
DROP INDEX task_executions_limited_claim;
CREATE INDEX task_executions_limited_claim
    ON task_executions (priority DESC, created_at, position)
    WHERE status = 'ready' AND flow_limited = 1 AND retry_at IS NULL;
CREATE INDEX task_executions_retrying ON task_executions (retry_at)
    WHERE status = 'ready' AND retry_at IS NOT NULL;
