-- 0013: the claims name the index they walk (task_executions_claim, in claim order), so the
-- index of ready rows by retry time is dropped: nothing else reads it, and it offered the
-- planner a plan that sorts every ready row when its statistics said few were ready.

DROP INDEX task_executions_ready;
