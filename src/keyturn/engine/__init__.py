"""The rewrite engine: the online table walk, pacing, jobs, chunks and backups."""
