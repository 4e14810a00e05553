-- 0014: a context row may hold what changed since another row instead of a full copy
-- (repository/deltas.py): base_id names that row, NULL for the full text. Rows written before
-- stay full. No foreign key: deleting a row would then look for rows resting on it, which
-- needs an index on base_id that every delta pays for. A delta only rests on a row its own
-- execution keeps (an output, or its initial context), and prune_contexts deletes a row only
-- once no execution keeps it.

ALTER TABLE contexts ADD COLUMN base_id TEXT;
