-- Retention (docs/retention.md): finished workflow trees older than their
-- queue's retention are deleted by the executors, in batches.

-- How long a queue keeps a finished workflow tree, counted from its root's
-- completion; NULL keeps it forever. Declared by executors at launch.
ALTER TABLE tandem.queues ADD COLUMN retention_ms bigint CHECK (retention_ms >= 0);

-- The collector's scan: finished roots, oldest completion first. Children
-- are reached through workflows_by_parent, their rows' steps, messages and
-- events through those tables' keys.
CREATE INDEX workflows_finished_roots ON tandem.workflows (completed_at)
    WHERE parent_id IS NULL AND status IN ('SUCCESS', 'ERROR', 'CANCELLED');
