-- Priorities (docs/api.md "Priorities"): a job's priority is in its request
-- (request -> 'extra' -> 'priority', 0..2, default 1). Claims take the
-- highest priority first, oldest first within a level; this index serves
-- that order for queued jobs.
CREATE INDEX jobs_queued_priority ON zitops.jobs
    ((coalesce((request -> 'extra' ->> 'priority')::integer, 1)) DESC, seq)
    WHERE status = 'queued';
