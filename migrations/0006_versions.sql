-- Application versions (docs/versioning.md). Each run records the version
-- of the code that first ran it; executors claim and recover only the
-- versions they declare they accept. A run that never ran (ENQUEUED at
-- epoch 0, for example from tandem.enqueue_workflow) has none yet: the
-- executor whose claim starts it stamps its own.
ALTER TABLE tandem.workflows ADD COLUMN app_version text;

-- Runs that ran before versions existed ran under code that declared no
-- version, which is the default version's name.
UPDATE tandem.workflows SET app_version = 'unversioned' WHERE owner_epoch > 0;

-- What each live executor runs, so that operators can see which versions
-- some executor accepts (tandem versions). Written at registration; NULL
-- for a row a heartbeat re-created after a peer reaped it (the executor
-- still runs what it registered, but the row no longer says).
ALTER TABLE tandem.executors
    ADD COLUMN app_version text,
    ADD COLUMN accepts     text[];

-- Markers of ctx.patched(..): a run that reached a patch under code that
-- has it records that it took the patched path.
ALTER TABLE tandem.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE tandem.steps ADD CONSTRAINT steps_kind_check
    CHECK (kind IN ('step', 'transaction', 'sleep', 'recv', 'event', 'child', 'child_result', 'patch'));
