-- Per-key concurrency (docs/queues.md): a queue may limit how many of its
-- workflows run at once per concurrency key (for example one per
-- customer), across all executors. The claim enforces it under the
-- queue's row lock, like the global limit.

-- The key an enqueue gave the workflow (NULL: none, never limited by key).
ALTER TABLE tandem.workflows ADD COLUMN concurrency_key text;

-- At most this many of the queue's workflows with one key run at once.
ALTER TABLE tandem.queues
    ADD COLUMN concurrency_per_key integer CHECK (concurrency_per_key > 0);

-- The claim counts a keyed queue's running workflows per key.
CREATE INDEX workflows_running_by_key
    ON tandem.workflows (queue, concurrency_key)
    WHERE status = 'RUNNING' AND concurrency_key IS NOT NULL;

-- tandem.enqueue_workflow gains its last argument, concurrency_key (1 to
-- 256 characters): a new signature, so the old function goes. Everything
-- else is as in 0002 and 0007 (SECURITY DEFINER, the pinned search_path),
-- and the errors of 0002 stand, plus
--   concurrency_key must be 1 to 256 characters
DROP FUNCTION tandem.enqueue_workflow(text, jsonb, text, text, integer, text, interval, boolean);

CREATE FUNCTION tandem.enqueue_workflow(
    name        text,
    input       jsonb,
    queue       text     DEFAULT 'default',
    workflow_id text     DEFAULT NULL,
    priority    integer  DEFAULT 0,
    dedup_key   text     DEFAULT NULL,
    delay       interval DEFAULT NULL,
    dedup_error boolean  DEFAULT false,
    concurrency_key text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
-- Pinned so that a caller's search_path can never redirect the function's
-- table references to look-alike objects.
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id       text := COALESCE(workflow_id, gen_random_uuid()::text);
    v_max      bigint;
    v_size     bigint;
    v_types    text[];
    v_existing record;
    v_inserted text;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: name must not be null'
            USING ERRCODE = '22023';
    END IF;
    IF input IS NULL THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: input must not be null'
            USING ERRCODE = '22023';
    END IF;
    SELECT w.input_types INTO v_types FROM tandem.workflow_names w WHERE w.name = enqueue_workflow.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: unknown workflow name "%"', name
            USING ERRCODE = '22023',
                  HINT = 'workflow names are registered by executors at launch';
    END IF;
    IF NOT (jsonb_typeof(input) = ANY (v_types)) THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: workflow "%" takes JSON %, not %',
            name, array_to_string(v_types, ' or '), jsonb_typeof(input)
            USING ERRCODE = '22023';
    END IF;
    IF queue IS NULL OR NOT EXISTS (SELECT 1 FROM tandem.queues q WHERE q.name = queue) THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: unknown queue "%"', queue
            USING ERRCODE = '22023',
                  HINT = 'queues are declared by executors at launch';
    END IF;
    SELECT s.value::bigint INTO v_max FROM tandem.settings s WHERE s.key = 'payload_max_bytes';
    v_size := octet_length(input::text);
    IF v_size > v_max THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: input is % bytes, over the limit of % bytes', v_size, v_max
            USING ERRCODE = '54000';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -1000000 AND 1000000 THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: priority must be between -1000000 and 1000000'
            USING ERRCODE = '22023';
    END IF;
    IF delay < interval '0' THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: delay must not be negative'
            USING ERRCODE = '22023';
    END IF;
    IF length(v_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: workflow_id must be 1 to 256 characters'
            USING ERRCODE = '22023';
    END IF;
    IF length(concurrency_key) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: concurrency_key must be 1 to 256 characters'
            USING ERRCODE = '22023';
    END IF;

    -- ON CONFLICT DO NOTHING (no target) covers both the primary key and the
    -- deduplication index, and never aborts the caller's transaction.
    INSERT INTO tandem.workflows AS w
        (id, name, status, input, queue, priority, dedup_key, run_after,
         owner_epoch, created_at, updated_at, concurrency_key)
    VALUES
        (v_id, name, 'ENQUEUED', input, queue, priority, dedup_key,
         CASE WHEN delay IS NULL THEN NULL ELSE now() + delay END,
         0, now(), now(), concurrency_key)
    ON CONFLICT DO NOTHING
    RETURNING w.id INTO v_inserted;

    IF v_inserted IS NOT NULL THEN
        IF (SELECT s.value FROM tandem.settings s WHERE s.key = 'notify_on_enqueue') = 'true' THEN
            PERFORM pg_notify('tandem_work', queue);
        END IF;
        RETURN v_inserted;
    END IF;

    -- Idempotent on the workflow ID: the same ID returns itself.
    SELECT w.id, w.name INTO v_existing FROM tandem.workflows w WHERE w.id = v_id;
    IF FOUND THEN
        IF v_existing.name <> name THEN
            RAISE EXCEPTION 'tandem.enqueue_workflow: workflow ID "%" belongs to workflow "%", not "%"',
                v_id, v_existing.name, name
                USING ERRCODE = '23505';
        END IF;
        RETURN v_id;
    END IF;

    -- A deduplication conflict: return the unfinished workflow holding the key.
    SELECT w.id INTO v_existing FROM tandem.workflows w
     WHERE w.queue = enqueue_workflow.queue AND w.dedup_key = enqueue_workflow.dedup_key
       AND w.status IN ('ENQUEUED', 'RUNNING');
    IF FOUND THEN
        IF dedup_error THEN
            RAISE EXCEPTION 'tandem.enqueue_workflow: queue "%" already has an unfinished workflow with dedup_key "%": "%"',
                queue, dedup_key, v_existing.id
                USING ERRCODE = '23505';
        END IF;
        RETURN v_existing.id;
    END IF;

    -- The conflicting row committed and then finished (or vanished) between
    -- our insert and this read: the statement can simply be retried.
    RAISE EXCEPTION 'tandem.enqueue_workflow: concurrent conflict on workflow "%", retry', v_id
        USING ERRCODE = '40001';
END
$fn$;

-- The new signature in the roles' grants (0007), and the grants again.
CREATE OR REPLACE FUNCTION tandem.grant_roles() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $grant$
DECLARE
    v_granted text[] := '{}';
BEGIN
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tandem FROM PUBLIC;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tandem_executor') THEN
        GRANT USAGE ON SCHEMA tandem TO tandem_executor;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tandem TO tandem_executor;
        -- The migrations' record is the owner's to write.
        REVOKE INSERT, UPDATE, DELETE ON tandem._sqlx_migrations FROM tandem_executor;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA tandem TO tandem_executor;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tandem TO tandem_executor;
        REVOKE EXECUTE ON FUNCTION tandem.grant_roles(), tandem.setup_roles(boolean)
            FROM tandem_executor;
        v_granted := v_granted || 'tandem_executor'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tandem_enqueuer') THEN
        GRANT USAGE ON SCHEMA tandem TO tandem_enqueuer;
        GRANT EXECUTE ON FUNCTION
            tandem.enqueue_workflow(text, jsonb, text, text, integer, text, interval, boolean, text),
            tandem.send(text, text, jsonb)
            TO tandem_enqueuer;
        v_granted := v_granted || 'tandem_enqueuer'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tandem_operator') THEN
        GRANT USAGE ON SCHEMA tandem TO tandem_operator;
        GRANT SELECT ON ALL TABLES IN SCHEMA tandem TO tandem_operator;
        GRANT EXECUTE ON FUNCTION
            tandem.send(text, text, jsonb),
            tandem.cancel_workflow(text, text, bigint),
            tandem.resume_workflow(text, bigint),
            tandem.fork_workflow(text, text, integer, bigint)
            TO tandem_operator;
        v_granted := v_granted || 'tandem_operator'::text;
    END IF;
    RETURN v_granted;
END
$grant$;

SELECT tandem.grant_roles();
