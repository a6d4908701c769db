-- Tandem's durable state, in its own schema inside the application's database.
-- Table names, column names and the status/kind strings are a persisted
-- contract: applications and SQL functions may read them.

CREATE SCHEMA IF NOT EXISTS tandem;

CREATE TABLE tandem.workflows (
    id               text        PRIMARY KEY,
    name             text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('ENQUEUED', 'RUNNING', 'SUCCESS', 'ERROR')),
    input            jsonb       NOT NULL,
    output           jsonb,
    error            text,
    -- Ownership: the executor running the workflow and the fencing token of
    -- its current execution. Every checkpoint and the completion are written
    -- only while owner_epoch still matches.
    executor_id      text,
    owner_epoch      bigint      NOT NULL DEFAULT 0,
    -- Reserved for leases across executors (queue issue).
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    completed_at     timestamptz
);

-- Recovery looks up an executor's unfinished workflows; finished ones, the
-- vast majority, stay out of this index.
CREATE INDEX workflows_running_by_executor
    ON tandem.workflows (executor_id) WHERE status = 'RUNNING';

-- One row per completed step (a checkpoint). No foreign key to workflows: its
-- check would take a KEY SHARE row lock on the workflow for every step, and the
-- fence in the insert already proves the workflow exists.
CREATE TABLE tandem.steps (
    workflow_id  text        NOT NULL,
    step_id      integer     NOT NULL CHECK (step_id >= 0),
    name         text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('step', 'transaction')),
    output       jsonb,
    error        text,
    owner_epoch  bigint      NOT NULL,
    attempts     integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    completed_at timestamptz NOT NULL,
    -- The primary key is what makes a transactional step exactly-once: two
    -- executions can never both commit a checkpoint for the same step.
    PRIMARY KEY (workflow_id, step_id),
    CHECK ((output IS NULL) <> (error IS NULL))
);
