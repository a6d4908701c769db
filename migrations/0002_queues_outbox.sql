-- Queues, executors with leases, and the SQL outbox function
-- tandem.enqueue_workflow. Names are a persisted contract.

-- Every workflow belongs to a queue. Workflows started locally are inserted
-- directly as RUNNING in the 'default' queue; enqueued ones wait as ENQUEUED
-- until an executor claims them.
ALTER TABLE tandem.workflows
    ADD COLUMN queue      text        NOT NULL DEFAULT 'default',
    ADD COLUMN priority   integer     NOT NULL DEFAULT 0,
    ADD COLUMN dedup_key  text,
    ADD COLUMN run_after  timestamptz,
    ADD COLUMN started_at timestamptz;

-- The claim scans ready workflows of one queue in priority order; finished
-- workflows stay out of the index.
CREATE INDEX workflows_ready
    ON tandem.workflows (queue, priority, created_at) WHERE status = 'ENQUEUED';

-- Global concurrency limits count a queue's running workflows.
CREATE INDEX workflows_running_by_queue
    ON tandem.workflows (queue) WHERE status = 'RUNNING';

-- Rate limits count a queue's recent starts.
CREATE INDEX workflows_started_by_queue
    ON tandem.workflows (queue, started_at) WHERE started_at IS NOT NULL;

-- Deduplication: at most one unfinished workflow per (queue, dedup_key). A
-- finished workflow leaves the index, so the key can be used again.
CREATE UNIQUE INDEX workflows_dedup
    ON tandem.workflows (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('ENQUEUED', 'RUNNING');

-- Live executors. An executor renews its lease by heartbeating; once the
-- lease has expired, any executor re-enqueues the workflows it owned.
CREATE TABLE tandem.executors (
    id               text        PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    heartbeat_at     timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL
);

-- Workflow names some executor can run, registered at launch, so that the
-- SQL function can reject unknown names inside the caller's transaction.
CREATE TABLE tandem.workflow_names (
    name          text        PRIMARY KEY,
    -- The JSON types (jsonb_typeof) the workflow's input decodes from.
    input_types   text[]      NOT NULL,
    registered_at timestamptz NOT NULL
);

-- Queues declared by executors. The row is also the lock that serializes
-- claimers of a queue with a global concurrency or rate limit.
CREATE TABLE tandem.queues (
    name                 text    PRIMARY KEY,
    concurrency_global   integer CHECK (concurrency_global > 0),
    rate_limit_count     integer CHECK (rate_limit_count > 0),
    rate_limit_period_ms bigint  CHECK (rate_limit_period_ms > 0),
    CHECK ((rate_limit_count IS NULL) = (rate_limit_period_ms IS NULL))
);
INSERT INTO tandem.queues (name) VALUES ('default');

-- Engine settings the SQL functions need.
CREATE TABLE tandem.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO tandem.settings (key, value) VALUES
    ('payload_max_bytes', '1048576'),
    ('notify_on_enqueue', 'true');

-- tandem.enqueue_workflow: enqueue a workflow inside the caller's
-- transaction. It exists if and only if that transaction commits.
--
-- Errors (SQLSTATE 22023 invalid_parameter_value unless noted) start with
-- "tandem.enqueue_workflow:" and are a stable contract:
--   name must not be null / unknown workflow name "x"
--   input must not be null
--   workflow "x" takes JSON object or array, not string
--   input is N bytes, over the limit of M bytes          (54000 program_limit_exceeded)
--   unknown queue "x"
--   priority must be between -1000000 and 1000000
--   delay must not be negative
--   workflow_id must be 1 to 256 characters
--   workflow ID "x" belongs to workflow "y", not "z"     (23505 unique_violation)
--   queue "q" already has an unfinished workflow with dedup_key "k": "id"
--                                                        (23505, only when dedup_error)
CREATE FUNCTION tandem.enqueue_workflow(
    name        text,
    input       jsonb,
    queue       text     DEFAULT 'default',
    workflow_id text     DEFAULT NULL,
    priority    integer  DEFAULT 0,
    dedup_key   text     DEFAULT NULL,
    delay       interval DEFAULT NULL,
    dedup_error boolean  DEFAULT false
) RETURNS text
LANGUAGE plpgsql
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

    -- ON CONFLICT DO NOTHING (no target) covers both the primary key and the
    -- deduplication index, and never aborts the caller's transaction.
    INSERT INTO tandem.workflows AS w
        (id, name, status, input, queue, priority, dedup_key, run_after,
         owner_epoch, created_at, updated_at)
    VALUES
        (v_id, name, 'ENQUEUED', input, queue, priority, dedup_key,
         CASE WHEN delay IS NULL THEN NULL ELSE now() + delay END,
         0, now(), now())
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
