-- Webhook deliveries (docs/api.md "Webhooks"). A job's target is in its
-- request (request -> 'extra' -> 'webhook'); this table holds only the
-- delivery's progress. A row appears once the job is final; "sending" rows
-- carry a claim that runs out, so one attempt per job runs at a time and one
-- cut short by a dead agent is taken up by another. Deleting the job
-- deletes its delivery.
CREATE TABLE zitops.webhook_deliveries (
    job_id text PRIMARY KEY REFERENCES zitops.jobs (id) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    claimed_by text,
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);
-- Due retries and claims that ran out.
CREATE INDEX webhook_deliveries_due ON zitops.webhook_deliveries (next_at)
    WHERE state IN ('pending', 'sending');
-- The sweep: final jobs that carry a webhook.
CREATE INDEX jobs_webhook_final ON zitops.jobs (finished_at)
    WHERE (request -> 'extra') ? 'webhook' AND status IN ('succeeded', 'failed', 'cancelled');
