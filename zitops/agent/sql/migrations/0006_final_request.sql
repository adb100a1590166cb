-- A job turning final keeps its input images' sizes, not their bytes (the
-- SQLite store's migration 2 does the same): nothing reads them again, since
-- answers show GenerationRequest.public_params, and an img2img job's request
-- held megabytes of base64 for result_ttl_s (the H100 soak, 2026-12-07: the
-- store grew 0.76 MiB a job). One trigger covers every statement that finishes
-- a job (succeed, fail, cancel, overdue, attempts spent); a job without input
-- images keeps its request untouched (no rewrite of the row's JSON).
CREATE FUNCTION zitops.final_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'cancelled')
            AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled')
            AND 'string' IN (jsonb_typeof(NEW.request -> 'init_image'), jsonb_typeof(NEW.request -> 'mask'),
                             jsonb_typeof(NEW.request -> 'control_image')) THEN
        NEW.request := NEW.request || jsonb_strip_nulls(jsonb_build_object(
            'init_image', CASE WHEN jsonb_typeof(NEW.request -> 'init_image') = 'string'
                THEN '<' || length(NEW.request ->> 'init_image') || ' base64 characters>' END,
            'mask', CASE WHEN jsonb_typeof(NEW.request -> 'mask') = 'string'
                THEN '<' || length(NEW.request ->> 'mask') || ' base64 characters>' END,
            'control_image', CASE WHEN jsonb_typeof(NEW.request -> 'control_image') = 'string'
                THEN '<' || length(NEW.request ->> 'control_image') || ' base64 characters>' END));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_final_request BEFORE UPDATE OF status ON zitops.jobs
    FOR EACH ROW EXECUTE FUNCTION zitops.final_request();
