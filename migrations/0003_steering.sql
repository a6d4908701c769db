-- Steering and talking to workflows: cancellation, deadlines, child
-- workflows, messages and events, and the SQL function tandem.send.

ALTER TABLE tandem.workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE tandem.workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('ENQUEUED', 'RUNNING', 'SUCCESS', 'ERROR', 'CANCELLED'));

ALTER TABLE tandem.workflows
    -- The workflow that started this one as a child; cancellation cascades.
    ADD COLUMN parent_id   text,
    -- Past this instant the workflow is cancelled at its next step boundary.
    ADD COLUMN deadline_at timestamptz;

CREATE INDEX workflows_by_parent ON tandem.workflows (parent_id) WHERE parent_id IS NOT NULL;
-- Listing by time, newest first.
CREATE INDEX workflows_by_created ON tandem.workflows (created_at);

ALTER TABLE tandem.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE tandem.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'transaction', 'sleep', 'recv', 'event', 'child', 'child_result'));

-- Messages waiting to be received. A receive deletes its message in the
-- same transaction that records the receiving step: consumed exactly once.
CREATE TABLE tandem.messages (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id text        NOT NULL,
    topic       text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX messages_by_destination ON tandem.messages (workflow_id, topic, id);

-- Events a workflow publishes (latest value per key).
CREATE TABLE tandem.events (
    workflow_id text        NOT NULL,
    key         text        NOT NULL,
    value       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, key)
);

-- tandem.send: send a message to a workflow inside the caller's
-- transaction; it is delivered if and only if that transaction commits.
-- Errors start with "tandem.send:" (SQLSTATE 22023, or 54000 for size):
--   workflow_id must not be null / unknown workflow "x"
--   topic must not be null / message must not be null
--   message is N bytes, over the limit of M bytes
CREATE FUNCTION tandem.send(workflow_id text, topic text, message jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_max  bigint;
    v_size bigint;
BEGIN
    IF workflow_id IS NULL THEN
        RAISE EXCEPTION 'tandem.send: workflow_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF topic IS NULL THEN
        RAISE EXCEPTION 'tandem.send: topic must not be null' USING ERRCODE = '22023';
    END IF;
    IF message IS NULL THEN
        RAISE EXCEPTION 'tandem.send: message must not be null' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tandem.workflows w WHERE w.id = send.workflow_id) THEN
        RAISE EXCEPTION 'tandem.send: unknown workflow "%"', workflow_id USING ERRCODE = '22023';
    END IF;
    SELECT s.value::bigint INTO v_max FROM tandem.settings s WHERE s.key = 'payload_max_bytes';
    v_size := octet_length(message::text);
    IF v_size > v_max THEN
        RAISE EXCEPTION 'tandem.send: message is % bytes, over the limit of % bytes', v_size, v_max
            USING ERRCODE = '54000';
    END IF;
    INSERT INTO tandem.messages (workflow_id, topic, payload, created_at)
    VALUES (send.workflow_id, topic, message, now());
    IF (SELECT s.value FROM tandem.settings s WHERE s.key = 'notify_on_enqueue') = 'true' THEN
        PERFORM pg_notify('tandem_work', 'message');
    END IF;
END
$fn$;
