-- Claims take ready workflows in a total order: priority, then creation
-- time, then ID. Workflows enqueued in one transaction share `now()`, so
-- without the ID the order among them was the heap's, and the memory model
-- (which breaks the tie by ID) could not agree with it. The index serves
-- the whole ORDER BY of the claim.
DROP INDEX tandem.workflows_ready;
CREATE INDEX workflows_ready
    ON tandem.workflows (queue, priority, created_at, id) WHERE status = 'ENQUEUED';
