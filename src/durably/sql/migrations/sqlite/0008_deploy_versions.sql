-- 0008: deploy-safe versions. An execution stores the shape version it needs (task names
-- and dependencies, see versions.py), so any definition of that shape resumes it. Rows from
-- before carry their version there and keep resuming on that definition only. Each attempt
-- records the version of the code it ran (code_version). Workers advertise the definitions
-- they serve (worker_versions), so `durably list --stranded` knows what nobody can run.

ALTER TABLE pipeline_executions ADD COLUMN pipeline_shape TEXT;
UPDATE pipeline_executions SET pipeline_shape = pipeline_version;
ALTER TABLE task_executions ADD COLUMN code_version TEXT;
ALTER TABLE task_attempts ADD COLUMN code_version TEXT;

CREATE TABLE worker_versions (
    worker_id TEXT PRIMARY KEY,
    versions TEXT NOT NULL,
    lease REAL NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
