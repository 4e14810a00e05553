-- 0012: an output's link row is written once per completed task, so it carries only the keys
-- its readers use. Its foreign keys to its task and to its context went: each was checked on
-- every insert, and the task one needed an index only so that deleting a task row could find
-- its outputs, which nothing does (pruning and a mapped task's retry delete outputs first, by
-- execution and task name). What keeps a shared context alive is prune_contexts' own check,
-- over task_execution_metadata_context.

ALTER TABLE task_execution_metadata
    DROP CONSTRAINT task_execution_metadata_task_execution_id_fkey,
    DROP CONSTRAINT task_execution_metadata_context_id_fkey;
DROP INDEX task_execution_metadata_task;
