-- 0007: sub-workflows. A child execution names its parent (parent_execution_id, which a fork
-- also sets) and the parent's task that runs it: only a child has parent_task. Cancelling
-- a parent finds its children through the index.

ALTER TABLE pipeline_executions ADD COLUMN parent_task TEXT;
CREATE INDEX pipeline_executions_children ON pipeline_executions (parent_execution_id)
    WHERE parent_task IS NOT NULL;
