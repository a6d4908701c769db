-- A receive's timeout counts from its first wait, across crashes and
-- takeovers: the first execution that waits at a `recv` step records when
-- it times out, and later executions of the same step wait for that time.
-- One receive waits at a time per workflow, so one pair of columns does.
-- Milliseconds of the engine's clock, exact (as a sleep's recorded wake-up).
ALTER TABLE tandem.workflows
    ADD COLUMN wait_step integer,
    ADD COLUMN wait_until_ms bigint;
