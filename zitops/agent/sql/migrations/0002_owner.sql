-- Tenants: a job belongs to the token that submitted it (sha256 of the
-- token, never the token). NULL for jobs of a token-less agent.
ALTER TABLE zitops.jobs ADD COLUMN owner text;
-- The per-token share of the queue counts an owner's waiting jobs.
CREATE INDEX jobs_owner_queued ON zitops.jobs (owner) WHERE status = 'queued';
