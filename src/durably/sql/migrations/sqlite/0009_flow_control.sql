-- 0009: flow control (flow.py). Priorities order the claim: each task row carries its
-- execution's, and ready rows are indexed in claim order, so a claim reads the rows it takes
-- instead of sorting every ready one (flow_limited = 1 marks the rows of workflows with
-- limits, which a limited claim reads through an index of their own). Each task row also
-- carries the name@shape its execution needs (pipeline_key), so a claim skips the rows of
-- workflows it cannot run without reading their executions. A limited task row carries the
-- key its running attempts are counted under (concurrency_key) and the bucket it takes a
-- token from (rate_key). A limited execution carries its key, and admitted = 1 once its
-- first task was claimed (it holds a slot until it is no longer running). Rate buckets
-- keep their tokens with the epoch second they were counted at. The partial indexes make
-- counting what runs under a key cost what runs, not what waits.

ALTER TABLE pipeline_executions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipeline_executions ADD COLUMN concurrency_key TEXT;
ALTER TABLE pipeline_executions ADD COLUMN admitted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN concurrency_key TEXT;
ALTER TABLE task_executions ADD COLUMN rate_key TEXT;
ALTER TABLE task_executions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN flow_limited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN pipeline_key TEXT;
UPDATE task_executions SET pipeline_key = (
    SELECT p.pipeline_name || '@' || p.pipeline_shape FROM pipeline_executions p
    WHERE p.id = task_executions.pipeline_execution_id
);
CREATE INDEX task_executions_claim
    ON task_executions (priority DESC, created_at, position, pipeline_key)
    WHERE status = 'ready';
CREATE INDEX task_executions_limited_claim
    ON task_executions (priority DESC, created_at, position)
    WHERE status = 'ready' AND flow_limited = 1;
CREATE INDEX task_executions_limited ON task_executions (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX pipeline_executions_limited ON pipeline_executions (concurrency_key)
    WHERE status = 'running' AND admitted = 1;

CREATE TABLE rate_buckets (
    name TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    counted_at REAL NOT NULL
);
