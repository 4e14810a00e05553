-- SQLite-specific versions of shared queries (same name wins).

