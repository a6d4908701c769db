-- Trace context (docs/observability.md): the W3C `traceparent` of whoever
-- started or enqueued a workflow is stored with it, so that every
-- execution of the run (the first, a claim, a recovery on another
-- executor) continues the caller's trace.

-- NULL: the run starts a trace of its own. Written by the engine's starts
-- and by tandem.enqueue_workflow; a debounced enqueue replaces it with the
-- input. Never read by SQL.
ALTER TABLE tandem.workflows ADD COLUMN trace_parent text;

-- tandem.enqueue_workflow gains trace_parent, its last argument: a new
-- signature. The errors of 0002, 0008 and 0009 stand, plus (SQLSTATE 22023)
--   trace_parent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>
--   trace_parent must not have an all-zero trace or parent ID
DROP FUNCTION tandem.enqueue_workflow(text, jsonb, text, text, integer, text, interval, boolean, text, text, interval);

CREATE FUNCTION tandem.enqueue_workflow(
    name        text,
    input       jsonb,
    queue       text     DEFAULT 'default',
    workflow_id text     DEFAULT NULL,
    priority    integer  DEFAULT 0,
    dedup_key   text     DEFAULT NULL,
    delay       interval DEFAULT NULL,
    dedup_error boolean  DEFAULT false,
    concurrency_key text DEFAULT NULL,
    debounce_key text DEFAULT NULL,
    debounce_max_wait interval DEFAULT NULL,
    trace_parent text DEFAULT NULL
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
    v_attempt  integer;
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
    IF debounce_key IS NULL AND debounce_max_wait IS NOT NULL THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: debounce_max_wait needs debounce_key'
            USING ERRCODE = '22023';
    END IF;
    IF length(debounce_key) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: debounce_key must be 1 to 256 characters'
            USING ERRCODE = '22023';
    END IF;
    IF debounce_key IS NOT NULL AND (workflow_id IS NOT NULL OR dedup_key IS NOT NULL) THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: debounce_key cannot be combined with workflow_id or dedup_key'
            USING ERRCODE = '22023';
    END IF;
    IF debounce_key IS NOT NULL AND (delay IS NULL OR debounce_max_wait IS NULL) THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: debounce_key needs delay and debounce_max_wait'
            USING ERRCODE = '22023';
    END IF;
    IF debounce_max_wait < interval '0' THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: debounce_max_wait must not be negative'
            USING ERRCODE = '22023';
    END IF;
    IF trace_parent !~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: trace_parent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>'
            USING ERRCODE = '22023';
    END IF;
    IF substr(trace_parent, 4, 32) = repeat('0', 32) OR substr(trace_parent, 37, 16) = repeat('0', 16) THEN
        RAISE EXCEPTION 'tandem.enqueue_workflow: trace_parent must not have an all-zero trace or parent ID'
            USING ERRCODE = '22023';
    END IF;

    -- Debounce: the newest input replaces the pending (never started)
    -- workflow's of this queue, name and key, and its start moves to
    -- `delay` from now, but never past `debounce_max_wait` after that
    -- workflow was first enqueued. The UPDATE waits for a transaction that
    -- holds the row (a claim, another debounce) and re-checks the newest
    -- version: a workflow a claim started meanwhile is left alone, and a new
    -- pending one is inserted instead. An insert that finds a concurrent
    -- one committed goes back to the UPDATE, which now sees it.
    IF debounce_key IS NOT NULL THEN
        FOR v_attempt IN 1..3 LOOP
            UPDATE tandem.workflows w
               SET input = enqueue_workflow.input,
                   trace_parent = enqueue_workflow.trace_parent,
                   run_after = LEAST(now() + delay, w.created_at + debounce_max_wait),
                   updated_at = now()
             WHERE w.queue = enqueue_workflow.queue AND w.name = enqueue_workflow.name
               AND w.debounce_key = enqueue_workflow.debounce_key
               AND w.status = 'ENQUEUED' AND w.owner_epoch = 0
            RETURNING w.id INTO v_inserted;
            IF v_inserted IS NOT NULL THEN
                RETURN v_inserted;
            END IF;
            INSERT INTO tandem.workflows AS w
                (id, name, status, input, queue, priority, run_after, owner_epoch,
                 created_at, updated_at, concurrency_key, debounce_key, trace_parent)
            VALUES
                (v_id, name, 'ENQUEUED', input, queue, priority,
                 now() + LEAST(delay, debounce_max_wait), 0, now(), now(),
                 concurrency_key, debounce_key, trace_parent)
            ON CONFLICT DO NOTHING
            RETURNING w.id INTO v_inserted;
            IF v_inserted IS NOT NULL THEN
                IF (SELECT s.value FROM tandem.settings s WHERE s.key = 'notify_on_enqueue') = 'true' THEN
                    PERFORM pg_notify('tandem_work', queue);
                END IF;
                RETURN v_inserted;
            END IF;
        END LOOP;
        RAISE EXCEPTION 'tandem.enqueue_workflow: concurrent conflict on debounce_key "%", retry', debounce_key
            USING ERRCODE = '40001';
    END IF;

    -- ON CONFLICT DO NOTHING (no target) covers both the primary key and the
    -- deduplication index, and never aborts the caller's transaction.
    INSERT INTO tandem.workflows AS w
        (id, name, status, input, queue, priority, dedup_key, run_after,
         owner_epoch, created_at, updated_at, concurrency_key, trace_parent)
    VALUES
        (v_id, name, 'ENQUEUED', input, queue, priority, dedup_key,
         CASE WHEN delay IS NULL THEN NULL ELSE now() + delay END,
         0, now(), now(), concurrency_key, trace_parent)
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

-- grant_roles (0009) names the function by name: re-running it grants
-- the new signature.
SELECT tandem.grant_roles();
