-- Least privilege (docs/security.md): three group roles, the management
-- operations as functions, and the SQL entry points as SECURITY DEFINER.
--
--   tandem_executor  runs workflows: reads and writes Tandem's tables.
--   tandem_enqueuer  calls tandem.enqueue_workflow and tandem.send, and
--                    nothing else: no table privilege at all.
--   tandem_operator  reads the tables, sends messages, and cancels, resumes
--                    and forks through the functions below; it cannot write
--                    a table, so it cannot forge a checkpoint or a result.
--
-- The migrating role stays the owner of everything. Roles are global to the
-- cluster; the privileges granted here are this database's.

-- The management operations. They run as the owner, so that an operator
-- needs no UPDATE or INSERT on the tables; each does exactly what its
-- Admin method does and nothing a caller can widen. The engine's PostgreSQL
-- backend calls these same functions, so there is one implementation.

-- A cancel's cascade, level by level, each level in statements of their
-- own. In a VOLATILE function under READ COMMITTED every statement takes a
-- new snapshot: the UPDATE of a level locks its unfinished rows, waiting
-- for any child insert that holds one (a child's insert locks its running
-- parent), so the next level's SELECT sees every child started under them;
-- a child insert that comes later finds its parent cancelled and inserts
-- nothing. (One recursive statement would miss a child whose insert commits
-- while it runs.) With `fence`, the root is cancelled only while it runs
-- under that epoch, and nothing otherwise (a deadline's cancel). Returns the
-- IDs cancelled: the root's level first, each level in byte order.
-- Executors only (an operator's cancel is tandem.cancel_workflow).
CREATE FUNCTION tandem.cancel_tree(
    workflow_id text,
    reason      text,
    now_ms      bigint,
    fence       bigint
) RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_level     text[] := ARRAY[workflow_id];
    v_seen      text[] := ARRAY[workflow_id];
    v_ids       text[];
    v_cancelled text[] := '{}';
    v_root      boolean := true;
    v_at        timestamptz := COALESCE(to_timestamp(now_ms::float8 / 1000), now());
BEGIN
    IF workflow_id IS NULL OR reason IS NULL THEN
        RAISE EXCEPTION 'tandem.cancel_workflow: workflow_id and reason must not be null'
            USING ERRCODE = '22023';
    END IF;
    WHILE cardinality(v_level) > 0 LOOP
        WITH done AS (
            UPDATE tandem.workflows w
               SET status = 'CANCELLED', error = reason, executor_id = NULL,
                   owner_epoch = w.owner_epoch + 1, updated_at = v_at,
                   completed_at = clock_timestamp()
             WHERE w.id = ANY (v_level) AND w.status IN ('ENQUEUED', 'RUNNING')
               AND (NOT v_root OR fence IS NULL
                    OR (w.status = 'RUNNING' AND w.owner_epoch = fence))
         RETURNING w.id
        )
        SELECT COALESCE(array_agg(done.id ORDER BY done.id COLLATE "C"), '{}')
          INTO v_ids FROM done;
        IF v_root AND fence IS NOT NULL AND cardinality(v_ids) = 0 THEN
            RETURN '{}';
        END IF;
        v_root := false;
        v_cancelled := v_cancelled || v_ids;
        SELECT COALESCE(array_agg(w.id ORDER BY w.id COLLATE "C"), '{}')
          INTO v_level
          FROM tandem.workflows w
         WHERE w.parent_id = ANY (v_level) AND NOT (w.id = ANY (v_seen));
        v_seen := v_seen || v_level;
    END LOOP;
    RETURN v_cancelled;
END
$fn$;

-- tandem.cancel_workflow: Admin::cancel and `tandem workflow cancel`.
-- Cancels the workflow and its unfinished descendants, recording `reason`
-- as their error; returns their IDs (empty when it had finished or does
-- not exist).
CREATE FUNCTION tandem.cancel_workflow(
    workflow_id text,
    reason      text   DEFAULT 'cancelled',
    now_ms      bigint DEFAULT NULL
) RETURNS text[]
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT tandem.cancel_tree(workflow_id, reason, now_ms, NULL)
$fn$;

-- tandem.resume_workflow: Admin::resume and `tandem workflow resume`. The
-- cancelled workflow and every cancelled member of its subtree, as the
-- cancel's cascade left them (a resumed parent must not find its child
-- still cancelled), are enqueued again. True when the workflow itself was.
-- A resume that would give a deduplication key two unfinished workflows
-- fails with the index's unique violation (constraint workflows_dedup).
CREATE FUNCTION tandem.resume_workflow(workflow_id text, now_ms bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH RECURSIVE tree AS (
        SELECT w.id FROM tandem.workflows w
         WHERE w.id = resume_workflow.workflow_id AND w.status = 'CANCELLED'
        UNION
        SELECT w.id FROM tandem.workflows w JOIN tree ON w.parent_id = tree.id
    ), resumed AS (
        UPDATE tandem.workflows w
           SET status = 'ENQUEUED', error = NULL, executor_id = NULL, run_after = NULL,
               deadline_at = NULL, completed_at = NULL, owner_epoch = w.owner_epoch + 1,
               updated_at = COALESCE(to_timestamp(now_ms::float8 / 1000), now())
          FROM tree
         WHERE w.id = tree.id AND w.status = 'CANCELLED'
     RETURNING w.id
    )
    SELECT EXISTS (SELECT 1 FROM resumed WHERE resumed.id = resume_workflow.workflow_id)
$fn$;

-- tandem.fork_workflow: Admin::fork and `tandem workflow fork`. A new run
-- `new_id` of `source_id`'s workflow with its input, queue, priority and
-- version, that replays the source's checkpoints before `from_step`.
-- False when the source does not exist; a taken `new_id` fails with a
-- unique violation. Only recorded checkpoints are copied, so a fork cannot
-- make up a step result.
--
-- The epochs are storage::contract's: the fork starts at EPOCH_FIRST (1),
-- so that its first claim loads history; copied checkpoints carry
-- EPOCH_NEVER_RAN (0), recorded before any execution of the fork, so they
-- replay for every one of them.
CREATE FUNCTION tandem.fork_workflow(
    source_id text,
    new_id    text,
    from_step integer,
    now_ms    bigint DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_at timestamptz := COALESCE(to_timestamp(now_ms::float8 / 1000), now());
BEGIN
    IF source_id IS NULL OR from_step IS NULL THEN
        RAISE EXCEPTION 'tandem.fork_workflow: source_id and from_step must not be null'
            USING ERRCODE = '22023';
    END IF;
    IF new_id IS NULL OR length(new_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'tandem.fork_workflow: new_id must be 1 to 256 characters'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO tandem.workflows
        (id, name, status, input, queue, priority, owner_epoch, created_at, updated_at,
         app_version)
    SELECT new_id, w.name, 'ENQUEUED', w.input, w.queue, w.priority, 1, v_at, v_at,
           w.app_version
      FROM tandem.workflows w WHERE w.id = source_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO tandem.steps
        (workflow_id, step_id, name, kind, output, error, owner_epoch, attempts,
         started_at, completed_at)
    SELECT new_id, s.step_id, s.name, s.kind, s.output, s.error, 0, s.attempts,
           s.started_at, s.completed_at
      FROM tandem.steps s WHERE s.workflow_id = source_id AND s.step_id < from_step;
    RETURN true;
END
$fn$;

-- The outbox's entry points run as the owner: an enqueuer holds EXECUTE on
-- them and no privilege on any table. Their search_path is pinned (since
-- 0002), so a caller's objects can never stand in for Tandem's, and they
-- validate every argument themselves.
ALTER FUNCTION tandem.enqueue_workflow(text, jsonb, text, text, integer, text, interval, boolean)
    SECURITY DEFINER;
ALTER FUNCTION tandem.send(text, text, jsonb) SECURITY DEFINER;

-- Functions are executable by PUBLIC unless revoked; a SECURITY DEFINER
-- function executable by anyone would hand the owner's rights to anyone.
-- tandem.grant_roles revokes PUBLIC's EXECUTE on every function in the
-- schema each time it runs; this covers functions the owner creates later.
ALTER DEFAULT PRIVILEGES IN SCHEMA tandem REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- tandem.grant_roles: gives each of Tandem's roles that exists its
-- privileges in this database, and takes PUBLIC's away. Idempotent; every
-- migration that adds a table or a function ends by calling it, and
-- tandem.setup_roles calls it after creating the roles. Returns the roles
-- it granted to. Only the owner (or a superuser) may run it.
CREATE FUNCTION tandem.grant_roles() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
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
            tandem.enqueue_workflow(text, jsonb, text, text, integer, text, interval, boolean),
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
$fn$;

-- tandem.setup_roles: creates those of Tandem's roles that do not exist
-- yet, then grants them their privileges (tandem.grant_roles). Creating a
-- role needs a superuser or CREATEROLE: with `strict` a caller without
-- either gets an error, otherwise a notice and the grants for the roles
-- that exist. `tandem setup-roles` calls it strictly; the migration below
-- leniently, so that a migrating role that may not create roles still
-- migrates. Several databases of one cluster may set up at once: a
-- concurrent creation of the same role is not an error.
CREATE FUNCTION tandem.setup_roles(strict boolean DEFAULT true) RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['tandem_executor', 'tandem_enqueuer', 'tandem_operator'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        ELSIF strict THEN
            RAISE EXCEPTION 'tandem.setup_roles: role % does not exist and % may not create roles',
                v_role, current_user
                USING ERRCODE = '42501',
                      HINT = 'run it as a superuser or a role with CREATEROLE, or create the roles (NOLOGIN) by hand first';
        ELSE
            RAISE NOTICE 'tandem: role % not created: % may not create roles; run `tandem setup-roles` as a role that may',
                v_role, current_user;
        END IF;
    END LOOP;
    RETURN tandem.grant_roles();
END
$fn$;

SELECT tandem.setup_roles(false);
