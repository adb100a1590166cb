-- Every query of the PostgreSQL job store, loaded by name (pg_schema.query).
-- A block starts with "-- name: <name>"; the comment lines after it say what
-- it does. Parameters are psycopg's %(name)s. A job may change only while it
-- is queued or running on the calling agent (the "fence"): an agent whose
-- lease expired and moved to another agent cannot overwrite the new run.

-- name: add_job
-- A new queued job (the insert trigger notifies zitops_queued). With a cap,
-- nothing is inserted when the owner already has that many jobs waiting.
INSERT INTO zitops.jobs (id, status, request, owner)
SELECT %(id)s, 'queued', %(request)s, %(owner)s
WHERE %(owner_cap)s::integer IS NULL OR %(owner)s::text IS NULL
   OR (SELECT count(*) FROM zitops.jobs WHERE owner = %(owner)s AND status = 'queued') < %(owner_cap)s
RETURNING *;

-- name: get_job
SELECT * FROM zitops.jobs WHERE id = %(id)s;

-- name: start_job
-- Start one given queued job on this agent: count the attempt, take a lease.
UPDATE zitops.jobs
SET status = 'running', started_at = now(), worker = %(worker)s, agent_id = %(agent_id)s,
    attempts = attempts + 1, lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE id = %(id)s AND status = 'queued'
RETURNING *;

-- name: claim_jobs
-- The queued jobs of the highest priority, oldest first, as leases (the
-- order of jobs_queued_priority). SKIP LOCKED: concurrent claimers pass
-- over each other's rows instead of waiting, so each job goes to one agent.
WITH picked AS (
    SELECT id FROM zitops.jobs
    WHERE status = 'queued'
    ORDER BY coalesce((request -> 'extra' ->> 'priority')::integer, 1) DESC, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE zitops.jobs AS j
SET status = 'running', started_at = now(), worker = %(worker)s, agent_id = %(agent_id)s,
    attempts = j.attempts + 1, lease_until = now() + make_interval(secs => %(lease_s)s)
FROM picked
WHERE j.id = picked.id
RETURNING j.*;

-- name: requeue_job
-- Back to the queue (its worker died); uncount = 1 takes back the attempt.
UPDATE zitops.jobs
SET status = 'queued', worker = NULL, lease_until = NULL, error = %(error)s,
    attempts = attempts - %(uncount)s
WHERE id = %(id)s AND (status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s))
RETURNING *;

-- name: succeed_job
UPDATE zitops.jobs
SET status = 'succeeded', finished_at = now(), images = %(images)s, info = %(info)s,
    error = NULL, lease_until = NULL
WHERE id = %(id)s AND (status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s))
RETURNING *;

-- name: fail_job
UPDATE zitops.jobs
SET status = 'failed', finished_at = now(), error = %(error)s, lease_until = NULL
WHERE id = %(id)s AND (status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s))
RETURNING *;

-- name: cancel_job
UPDATE zitops.jobs
SET status = 'cancelled', finished_at = now()
WHERE id = %(id)s AND status = 'queued'
RETURNING *;

-- name: recover_jobs
-- After this agent restarted: the jobs it was running go back to the queue.
UPDATE zitops.jobs
SET status = 'queued', worker = NULL, lease_until = NULL,
    error = 'requeued: the agent stopped while this job was running (agent ' || %(agent_id)s::text || ')'
WHERE status = 'running' AND agent_id = %(agent_id)s;

-- name: queued_ids
SELECT id FROM zitops.jobs WHERE status = 'queued' ORDER BY seq;

-- name: count_jobs
SELECT count(*) AS n FROM zitops.jobs WHERE status = %(status)s;

-- name: expire_jobs
-- Final jobs that finished before a time; their images go with them (cascade).
DELETE FROM zitops.jobs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < to_timestamp(%(older_than)s)
RETURNING *;

-- name: expire_bytes
-- Oldest final jobs first, until the final jobs' images fit in max_bytes.
WITH sized AS (
    SELECT id, sum(image_bytes) OVER (ORDER BY finished_at DESC, seq DESC) AS kept
    FROM zitops.jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled')
)
DELETE FROM zitops.jobs AS j
USING sized
WHERE j.id = sized.id AND sized.kept > %(max_bytes)s
RETURNING j.*;

-- name: heartbeat
-- Renew the agent's row and every lease it holds, in one statement (a
-- data-modifying WITH runs even though nothing reads it).
WITH agent AS (
    INSERT INTO zitops.agents AS a (agent_id, heartbeat_at, ready)
    VALUES (%(agent_id)s, now(), %(ready)s)
    ON CONFLICT (agent_id) DO UPDATE SET heartbeat_at = now(), ready = EXCLUDED.ready
)
UPDATE zitops.jobs
SET lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE status = 'running' AND agent_id = %(agent_id)s
RETURNING id;

-- name: reap_expired
-- Running jobs whose lease ran out (their agent stopped heartbeating): back
-- to the queue, or failed once they used max_attempts. The attempt stays
-- counted. Not within one lease of the server's own start, so after a
-- PostgreSQL restart every live agent gets a full lease to renew first.
WITH expired AS (
    SELECT id FROM zitops.jobs
    WHERE status = 'running' AND lease_until < now()
      AND now() - pg_postmaster_start_time() > make_interval(secs => %(lease_s)s)
    ORDER BY seq
    FOR UPDATE SKIP LOCKED
)
UPDATE zitops.jobs AS j
SET status = CASE WHEN j.attempts >= %(max_attempts)s THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN j.attempts >= %(max_attempts)s THEN now() END,
    error = CASE WHEN j.attempts >= %(max_attempts)s
        THEN format('agent lost twice while running this job: lease of agent %%s expired '
                    '(attempt %%s of %%s); failed by agent %%s',
                    j.agent_id, j.attempts, %(max_attempts)s::integer, %(agent_id)s::text)
        ELSE format('requeued after: lease of agent %%s expired (attempt %%s of %%s); '
                    'requeued by agent %%s', j.agent_id, j.attempts, %(max_attempts)s::integer, %(agent_id)s::text)
        END,
    worker = NULL, lease_until = NULL
FROM expired
WHERE j.id = expired.id
RETURNING j.*;

-- name: fleet_counts
-- Back-pressure and /metrics: the fleet's waiting and running jobs, the
-- agents that heartbeat as ready within one lease, the stored image bytes.
SELECT
    (SELECT count(*) FROM zitops.jobs WHERE status = 'queued') AS queued,
    (SELECT count(*) FROM zitops.jobs WHERE status = 'running') AS running,
    (SELECT count(*) FROM zitops.agents
      WHERE ready AND heartbeat_at > now() - make_interval(secs => %(lease_s)s)) AS ready_agents,
    (SELECT coalesce(sum(image_bytes), 0) FROM zitops.jobs) AS image_bytes;

-- name: delete_images
DELETE FROM zitops.job_images WHERE job_id = %(id)s;

-- name: put_images
-- A job's encoded images (replacing any earlier attempt's), and their total size.
-- %(data)b: the images travel in binary, 3x faster than psycopg's default
-- text (hex) form for an array of bytes.
WITH put AS (
    INSERT INTO zitops.job_images (job_id, idx, name, data)
    SELECT %(id)s, (u.i - 1)::integer, u.name, u.data
    FROM unnest(%(names)s::text[], %(data)b::bytea[]) WITH ORDINALITY AS u(name, data, i)
    RETURNING octet_length(data) AS n
)
UPDATE zitops.jobs
SET image_bytes = (SELECT coalesce(sum(n), 0) FROM put)
WHERE id = %(id)s
RETURNING image_bytes;

-- name: get_image
-- Run with binary results (store_pg.get_image), so the bytes come back unencoded.
SELECT name, data FROM zitops.job_images WHERE job_id = %(id)s AND idx = %(idx)s;

-- name: cancel_running_job
-- A running job its worker stopped between two steps (DELETE of a running job).
UPDATE zitops.jobs
SET status = 'cancelled', finished_at = now()
WHERE id = %(id)s AND status = 'running'
RETURNING *;
