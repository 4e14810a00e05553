-- 0011: observability. A task row keeps its current attempt's log records (JSON text, NULL
-- when it logged nothing), moved to task_attempts with the attempt when a later one
-- supersedes it. An execution keeps the trace context (a W3C traceparent) of the span that
-- started it, so the workers' task spans join that trace.

ALTER TABLE task_executions ADD COLUMN logs TEXT;
ALTER TABLE pipeline_executions ADD COLUMN trace_context TEXT;
