-- The webhook ledger's queries (zitops/agent/webhook_pg.py), loaded by name
-- like queries.sql. Times are the server's.

-- name: open_delivery
-- The first delivery of a final job with a webhook, claimed by the agent that
-- finished it; nothing when the job has no webhook or a delivery exists.
WITH opened AS (
    INSERT INTO zitops.webhook_deliveries (job_id, state, claimed_until, claimed_by)
    SELECT j.id, 'sending', now() + make_interval(secs => %(claim_s)s), %(agent_id)s
    FROM zitops.jobs j
    WHERE j.id = %(id)s AND j.status IN ('succeeded', 'failed', 'cancelled')
      AND (j.request -> 'extra') ? 'webhook'
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, attempts
)
SELECT j.id, j.status, j.error, j.images, extract(epoch FROM j.created_at)::float8 AS created_at,
       extract(epoch FROM j.finished_at)::float8 AS finished_at, j.request -> 'extra' -> 'webhook' AS webhook,
       o.attempts
FROM opened o JOIN zitops.jobs j ON j.id = o.job_id;

-- name: sweep_deliveries
-- Pending deliveries for final jobs that have none, once they are past a
-- grace period in which the agent that finished them opens its own.
INSERT INTO zitops.webhook_deliveries (job_id, state)
SELECT j.id, 'pending' FROM zitops.jobs j
WHERE (j.request -> 'extra') ? 'webhook' AND j.status IN ('succeeded', 'failed', 'cancelled')
  AND j.finished_at < now() - make_interval(secs => %(grace_s)s)
  AND NOT EXISTS (SELECT 1 FROM zitops.webhook_deliveries d WHERE d.job_id = j.id)
ON CONFLICT (job_id) DO NOTHING;

-- name: claim_deliveries
-- Due deliveries (pending and due, or sending with a claim that ran out).
-- SKIP LOCKED: agents claiming at once pass over each other's rows.
WITH due AS (
    SELECT job_id FROM zitops.webhook_deliveries
    WHERE (state = 'pending' AND next_at <= now()) OR (state = 'sending' AND claimed_until < now())
    ORDER BY next_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE zitops.webhook_deliveries AS d
SET state = 'sending', claimed_until = now() + make_interval(secs => %(claim_s)s), claimed_by = %(agent_id)s
FROM due, zitops.jobs j
WHERE d.job_id = due.job_id AND j.id = d.job_id
RETURNING j.id, j.status, j.error, j.images, extract(epoch FROM j.created_at)::float8 AS created_at,
          extract(epoch FROM j.finished_at)::float8 AS finished_at,
          j.request -> 'extra' -> 'webhook' AS webhook, d.attempts;

-- name: settle_delivery
UPDATE zitops.webhook_deliveries
SET state = %(state)s, attempts = %(attempts)s, next_at = now() + make_interval(secs => %(next_in_s)s),
    claimed_until = NULL, last_status = %(status)s, last_error = %(error)s,
    done_at = CASE WHEN %(state)s IN ('delivered', 'failed') THEN now() END
WHERE job_id = %(id)s;

-- name: delivery_counts
SELECT state, count(*) AS n FROM zitops.webhook_deliveries GROUP BY state;

-- name: recent_deliveries
SELECT job_id, state, attempts, last_status, last_error, extract(epoch FROM created_at)::float8 AS created_at,
       extract(epoch FROM done_at)::float8 AS done_at
FROM zitops.webhook_deliveries ORDER BY created_at DESC LIMIT %(limit)s;
