-- Every query of the PostgreSQL job store, loaded by name (pg_schema.query).
-- A block starts with "-- name: <name>"; the comment lines after it say what
-- it does. Parameters are psycopg's %(name)s.
--
-- The fence: an agent writes a job's outcome (images, succeed, fail,
-- requeue, cancel of a running job) with the attempt it holds, and the
-- statement itself changes the row only while the job is running on that
-- agent at that attempt. A stale agent (its lease expired and the job was
-- requeued, or another agent runs attempt N+1) changes nothing: no check
-- and write in two steps that a reaper could slip between. With attempt
-- NULL (a caller that does not track attempts: the store contract tests)
-- the older, weaker fence holds: queued, or running on the calling agent.

-- name: lock_owner
-- Serializes the submits of one owner for the rest of the transaction, so
-- add_job's count of its waiting jobs is exact: under READ COMMITTED two
-- concurrent inserts each counted without the other's row (cap 2, 7
-- accepted). key1 is the store's namespace; owners whose names hash alike
-- only wait for each other.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(owner)s));

-- name: add_job
-- A new queued job (the insert trigger notifies zitops_queued). With a cap,
-- nothing is inserted when the owner already has that many jobs waiting
-- (run after lock_owner, in its transaction). An id that is taken (an
-- Idempotency-Key's job, stored by an earlier request) inserts nothing.
INSERT INTO zitops.jobs (id, status, request, owner)
SELECT %(id)s, 'queued', %(request)s, %(owner)s
WHERE %(owner_cap)s::integer IS NULL OR %(owner)s::text IS NULL
   OR (SELECT count(*) FROM zitops.jobs WHERE owner = %(owner)s AND status = 'queued') < %(owner_cap)s
ON CONFLICT (id) DO NOTHING
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
      -- never start a job past its max_queue_s (fail_overdue fails it within a second)
      AND NOT coalesce(created_at + make_interval(secs => CASE
              WHEN jsonb_typeof(request -> 'extra' -> 'max_queue_s') = 'number'
              THEN (request -> 'extra' ->> 'max_queue_s')::double precision END) <= now(), false)
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

-- name: fail_overdue
-- Queued jobs still waiting max_queue_s (request -> 'extra') after they were
-- accepted, on the server's clock, fail saying why (docs/api.md "Priorities").
-- Each fails once for the fleet, however many agents run this round at the
-- same moment: a row another agent (or a claim) has locked is skipped, and
-- one whose status changed meanwhile no longer matches.
WITH late AS (
    SELECT id FROM zitops.jobs
    WHERE status = 'queued'
      AND created_at + make_interval(secs => CASE
              WHEN jsonb_typeof(request -> 'extra' -> 'max_queue_s') = 'number'
              THEN (request -> 'extra' ->> 'max_queue_s')::double precision END) <= now()
    ORDER BY seq
    FOR UPDATE SKIP LOCKED
)
UPDATE zitops.jobs AS j
SET status = 'failed', finished_at = now(), lease_until = NULL,
    error = format('max_queue_s: still queued after %%s s, past its deadline of %%s s; not run',
                   round(extract(epoch FROM now() - j.created_at))::bigint, j.request -> 'extra' ->> 'max_queue_s')
FROM late
WHERE j.id = late.id
RETURNING j.*;

-- name: requeue_job
-- Back to the queue (its worker died); uncount = 1 takes back the attempt.
UPDATE zitops.jobs
SET status = 'queued', worker = NULL, lease_until = NULL, error = %(error)s,
    attempts = attempts - %(uncount)s
WHERE id = %(id)s AND (CASE WHEN %(attempt)s::integer IS NULL
            THEN status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s)
            ELSE status = 'running' AND agent_id = %(agent_id)s AND attempts = %(attempt)s END)
RETURNING *;

-- name: succeed_job
-- Publishes the attempt's images (put_images) with the job: readers see
-- them from this commit on, and every other attempt's are deleted with it.
WITH done AS (
    UPDATE zitops.jobs AS j
    SET status = 'succeeded', finished_at = now(), images = %(images)s, info = %(info)s,
        error = NULL, lease_until = NULL, image_attempt = j.attempts,
        image_bytes = (SELECT coalesce(sum(octet_length(i.data)), 0) FROM zitops.job_images AS i
                       WHERE i.job_id = j.id AND i.attempt = j.attempts)
    WHERE id = %(id)s AND (CASE WHEN %(attempt)s::integer IS NULL
            THEN status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s)
            ELSE status = 'running' AND agent_id = %(agent_id)s AND attempts = %(attempt)s END)
    RETURNING j.*
), gone AS (
    DELETE FROM zitops.job_images AS i USING done
    WHERE i.job_id = done.id AND i.attempt <> done.image_attempt
)
SELECT * FROM done;

-- name: fail_job
-- A failed job shows no images: any attempt's stored ones go with it.
WITH done AS (
    UPDATE zitops.jobs
    SET status = 'failed', finished_at = now(), error = %(error)s, lease_until = NULL
    WHERE id = %(id)s AND (CASE WHEN %(attempt)s::integer IS NULL
            THEN status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s)
            ELSE status = 'running' AND agent_id = %(agent_id)s AND attempts = %(attempt)s END)
    RETURNING *
), gone AS (
    DELETE FROM zitops.job_images AS i USING done WHERE i.job_id = done.id
)
SELECT * FROM done;

-- name: cancel_job
UPDATE zitops.jobs
SET status = 'cancelled', finished_at = now()
WHERE id = %(id)s AND status = 'queued'
RETURNING *;

-- name: recover_jobs
-- After this agent restarted: the jobs it was running go back to the queue,
-- or fail once they used max_attempts (a job that kills its agent must not
-- run forever because the agent comes back under the same id). Not those in
-- keep: finished jobs whose images wait on the agent's host for the object store.
UPDATE zitops.jobs
SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN attempts >= %(max_attempts)s THEN now() END,
    worker = NULL, lease_until = NULL,
    error = CASE WHEN attempts >= %(max_attempts)s
        THEN format('agent %%s stopped while running this job, attempt %%s of %%s: failed at its restart',
                    %(agent_id)s::text, attempts, %(max_attempts)s::integer)
        ELSE 'requeued: the agent stopped while this job was running (agent ' || %(agent_id)s::text || ')' END
WHERE status = 'running' AND agent_id = %(agent_id)s AND NOT (id = ANY(%(keep)s::text[]));

-- name: queued_ids
SELECT id FROM zitops.jobs WHERE status = 'queued' ORDER BY seq;

-- name: count_jobs
SELECT count(*) AS n FROM zitops.jobs WHERE status = %(status)s;

-- name: expire_jobs
-- Final jobs that finished more than max_age_s ago, on the server's clock
-- (finished_at is the server's now()): an agent's skewed clock never
-- shortens retention. Their images go with them (cascade).
DELETE FROM zitops.jobs
WHERE status IN ('succeeded', 'failed', 'cancelled')
  AND finished_at < now() - make_interval(secs => %(max_age_s)s)
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
-- Renew the agent's row and the leases it holds, in one statement (a
-- data-modifying WITH runs even though nothing reads it). With held (the
-- ids the agent runs or keeps an outcome of), only those: a row the agent
-- does not hold in memory (a claim whose reply was lost, a forgotten job)
-- is not renewed, so its lease expires and the reaper requeues it.
WITH agent AS (
    INSERT INTO zitops.agents AS a (agent_id, heartbeat_at, ready)
    VALUES (%(agent_id)s, now(), %(ready)s)
    ON CONFLICT (agent_id) DO UPDATE SET heartbeat_at = now(), ready = EXCLUDED.ready
)
UPDATE zitops.jobs
SET lease_until = now() + make_interval(secs => %(lease_s)s)
WHERE status = 'running' AND agent_id = %(agent_id)s
  AND (%(held)s::text[] IS NULL OR id = ANY(%(held)s::text[]))
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

-- name: put_images
-- A job's encoded images for the attempt the caller holds, behind the fence
-- (no row back: refused). They stay invisible until succeed_job publishes
-- that attempt; a retry of the same attempt replaces its own rows only.
-- The job's row is locked meanwhile, so a reap or another agent's succeed
-- waits for this statement instead of slipping between check and insert.
-- %(data)b: the images travel in binary, 3x faster than psycopg's default
-- text (hex) form for an array of bytes.
WITH job AS (
    SELECT id, coalesce(%(attempt)s::integer, attempts) AS attempt FROM zitops.jobs
    WHERE id = %(id)s AND (CASE WHEN %(attempt)s::integer IS NULL
            THEN status = 'queued' OR (status = 'running' AND agent_id = %(agent_id)s)
            ELSE status = 'running' AND agent_id = %(agent_id)s AND attempts = %(attempt)s END)
    FOR UPDATE
), put AS (
    INSERT INTO zitops.job_images (job_id, attempt, idx, name, data)
    SELECT job.id, job.attempt, (u.i - 1)::integer, u.name, u.data
    FROM job, unnest(%(names)s::text[], %(data)b::bytea[]) WITH ORDINALITY AS u(name, data, i)
    ON CONFLICT (job_id, attempt, idx) DO UPDATE SET name = EXCLUDED.name, data = EXCLUDED.data
    RETURNING octet_length(data) AS n
)
SELECT job.attempt, (SELECT coalesce(sum(n), 0) FROM put) AS image_bytes FROM job;

-- name: get_image
-- The images of the attempt that succeeded, only once it has. Run with
-- binary results (store_pg.get_image), so the bytes come back unencoded.
SELECT i.name, i.data
FROM zitops.job_images AS i JOIN zitops.jobs AS j ON j.id = i.job_id AND i.attempt = j.image_attempt
WHERE j.id = %(id)s AND i.idx = %(idx)s AND j.status = 'succeeded';

-- name: cancel_running_job
-- A running job its worker stopped between two steps (DELETE of a running job),
-- fenced like every outcome when the caller gives its attempt.
UPDATE zitops.jobs
SET status = 'cancelled', finished_at = now()
WHERE id = %(id)s AND status = 'running'
  AND (%(attempt)s::integer IS NULL OR (agent_id = %(agent_id)s AND attempts = %(attempt)s))
RETURNING *;
