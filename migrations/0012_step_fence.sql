-- The checkpoint fence, checked again after the insert (docs/retention.md,
-- "Checkpoints of superseded executions").
--
-- The checkpoint statement's fence reads the statement's snapshot, and the
-- primary key makes a step exactly-once. Retention deletes steps: an
-- execution superseded long ago whose statement took its snapshot before it
-- was superseded, then waited (for a concurrent inserter of the same step),
-- could find the step's row deleted with its finished workflow and insert
-- it again: a checkpoint, and a transactional step's writes, applied twice.
-- This trigger runs right after each insert, on a new snapshot: the row
-- goes in only if the workflow is RUNNING under the writer's epoch now. Once
-- that holds, the workflow cannot finish (and so cannot be deleted) before
-- this transaction ends, because finishing needs this step, whose key this
-- transaction holds. Steps copied by a fork (epoch 0) are exempt: their
-- workflow is a new ENQUEUED row of the same transaction.
CREATE FUNCTION tandem.steps_fence() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.owner_epoch <> 0 AND NOT EXISTS (
        SELECT 1 FROM tandem.workflows w
         WHERE w.id = NEW.workflow_id AND w.owner_epoch = NEW.owner_epoch
           AND w.status = 'RUNNING'
    ) THEN
        RAISE EXCEPTION 'workflow "%" is no longer owned by this execution', NEW.workflow_id
            USING ERRCODE = 'TDF01';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER steps_fence AFTER INSERT ON tandem.steps
    FOR EACH ROW EXECUTE FUNCTION tandem.steps_fence();

SELECT tandem.grant_roles();
