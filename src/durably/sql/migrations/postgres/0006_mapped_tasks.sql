-- 0006: runtime fan-out. An instance of a mapped task is a task row of its own, named
-- "task[i]", with its parent task's name and its index. The parent row counts its instances
-- and how many are done and failed, so the last one to finish knows it in one statement.

ALTER TABLE task_executions ADD COLUMN map_parent TEXT;
ALTER TABLE task_executions ADD COLUMN map_index INTEGER;
ALTER TABLE task_executions ADD COLUMN map_total INTEGER;
ALTER TABLE task_executions ADD COLUMN map_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN map_failed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX task_executions_instances ON task_executions (pipeline_execution_id, map_parent, map_index)
    WHERE map_parent IS NOT NULL;
