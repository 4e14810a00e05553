-- 0017: a participant's recorded replies are pruned by age, as finished executions are
-- (retention.py): without an index by time each batch would read the whole inbox.

CREATE INDEX saga_inbox_created ON saga_inbox (created_at);
