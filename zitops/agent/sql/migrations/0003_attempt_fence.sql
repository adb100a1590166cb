-- Fence by attempt (issue 24). A job's images are stored per attempt, and a
-- job shows the images of the attempt that succeeded it (image_attempt), and
-- only once it has: an agent whose lease moved on may still write images of
-- its own (stale) attempt, but nobody ever reads them, and the succeed that
-- publishes an attempt deletes every other attempt's.
ALTER TABLE zitops.job_images ADD COLUMN attempt integer NOT NULL DEFAULT 0;
ALTER TABLE zitops.job_images DROP CONSTRAINT job_images_pkey;
ALTER TABLE zitops.job_images ADD PRIMARY KEY (job_id, attempt, idx);
ALTER TABLE zitops.jobs ADD COLUMN image_attempt integer;
-- Images stored before this migration were one set per job: attempt 0, shown.
UPDATE zitops.jobs SET image_attempt = 0 WHERE status = 'succeeded';
