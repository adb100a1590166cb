-- Jobs, agents, images and the NOTIFY triggers of fleet mode.

-- One row per job. Times are the server's (now()), never an agent's clock.
-- agent_id is the agent that last started the job (kept after it ends, for
-- failure records); lease_until is set only while the job runs.
CREATE TABLE zitops.jobs (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    status text NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    request jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    images jsonb NOT NULL DEFAULT '[]',
    worker text,
    info jsonb NOT NULL DEFAULT '{}',
    agent_id text,
    lease_until timestamptz,
    image_bytes bigint NOT NULL DEFAULT 0
);

-- Claims scan queued jobs oldest first; KEDA and /metrics count them.
CREATE INDEX jobs_queued ON zitops.jobs (seq) WHERE status = 'queued';
-- The reaper looks for expired leases; heartbeats renew an agent's leases.
CREATE INDEX jobs_running_lease ON zitops.jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_running_agent ON zitops.jobs (agent_id) WHERE status = 'running';
-- Retention deletes final jobs by age.
CREATE INDEX jobs_finished ON zitops.jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- One row per agent, upserted by its heartbeat. An agent is counted as
-- ready while ready is true and its heartbeat is younger than one lease.
CREATE TABLE zitops.agents (
    agent_id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ready boolean NOT NULL DEFAULT false
);

-- Encoded images, so any agent serves any job's files. Deleting the job
-- deletes its images.
CREATE TABLE zitops.job_images (
    job_id text NOT NULL REFERENCES zitops.jobs (id) ON DELETE CASCADE,
    idx integer NOT NULL CHECK (idx >= 0),
    name text NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job_id, idx)
);
-- PNG/JPEG/WebP are already compressed: store out of line without trying
-- pglz on every image.
ALTER TABLE zitops.job_images ALTER COLUMN data SET STORAGE EXTERNAL;

-- Wake-ups. A trigger, not the store's code, so every writer notifies
-- (psql included). NOTIFY is delivered at commit, so a woken agent always
-- sees the row. zitops_queued: payload = job id, a job can be claimed.
-- zitops_done: payload = '<job id> <status>', the job reached a final state.
CREATE FUNCTION zitops.notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('zitops_queued', NEW.id);
    ELSIF NEW.status IN ('succeeded', 'failed', 'cancelled') THEN
        PERFORM pg_notify('zitops_done', NEW.id || ' ' || NEW.status);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON zitops.jobs
    FOR EACH ROW EXECUTE FUNCTION zitops.notify_job();
CREATE TRIGGER jobs_notify_update AFTER UPDATE OF status ON zitops.jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION zitops.notify_job();
