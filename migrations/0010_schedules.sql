-- Cron schedules (docs/schedules.md). One row per declared schedule, written
-- by every executor that declares it (the declaration columns) and by the
-- firing transactions (the cursor). There is no leader: an executor fires a
-- schedule by locking its row FOR UPDATE SKIP LOCKED, enqueueing one
-- workflow per due tick (its ID derived from the schedule and the tick) and
-- moving the cursor, in one transaction.
--
-- Times are milliseconds since the epoch of the database clock
-- (clock_timestamp()), as bigints: the cursor is compared with tick times
-- exactly, and a timestamptz round trip through float seconds could move it
-- by a microsecond onto the wrong side of a tick.
CREATE TABLE tandem.schedules (
    name          text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    workflow_name text NOT NULL,
    cron          text NOT NULL,
    time_zone     text NOT NULL,
    queue         text NOT NULL,
    catch_up      text NOT NULL CHECK (catch_up IN ('skip', 'latest', 'all')),
    catch_up_max  integer CHECK (catch_up_max BETWEEN 1 AND 10000),
    grace_ms      bigint NOT NULL CHECK (grace_ms >= 0),
    paused        boolean NOT NULL DEFAULT false,
    -- Every tick at or before this instant has been decided (enqueued or
    -- skipped). Set to the database clock at the first registration, so a
    -- new schedule does not catch up on its own past, and at a resume, so
    -- the ticks of a pause never run.
    cursor_ms     bigint NOT NULL,
    last_tick_ms  bigint,
    updated_ms    bigint NOT NULL
);

-- The database clock in milliseconds, as the schedules' columns hold it.
CREATE FUNCTION tandem.clock_ms() RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
RETURN floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;

-- Pauses a schedule: it fires nothing until resumed. Waits for a firing
-- transaction that holds the row. Whether the schedule exists. SECURITY
-- DEFINER so that tandem_operator needs no write privilege.
CREATE FUNCTION tandem.pause_schedule(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tandem.schedules s
       SET paused = true, updated_ms = tandem.clock_ms()
     WHERE s.name = pause_schedule.name AND NOT s.paused;
    RETURN EXISTS (SELECT 1 FROM tandem.schedules s WHERE s.name = pause_schedule.name);
END
$$;

-- Resumes a paused schedule. Its cursor moves to the database clock, so the
-- ticks that fell in the pause never run; resuming a schedule that is not
-- paused changes nothing (it must not skip ticks). Whether it exists.
CREATE FUNCTION tandem.resume_schedule(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tandem.schedules s
       SET paused = false,
           cursor_ms = GREATEST(s.cursor_ms, tandem.clock_ms()),
           updated_ms = tandem.clock_ms()
     WHERE s.name = resume_schedule.name AND s.paused;
    RETURN EXISTS (SELECT 1 FROM tandem.schedules s WHERE s.name = resume_schedule.name);
END
$$;

-- 0009's grants, with the schedule functions for operators.
CREATE OR REPLACE FUNCTION tandem.grant_roles() RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $grant$
DECLARE
    v_granted text[] := '{}';
    v_fn      regprocedure;
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
        FOR v_fn IN SELECT f.oid::regprocedure FROM pg_proc f
                     WHERE f.pronamespace = 'tandem'::regnamespace
                       AND f.proname IN ('enqueue_workflow', 'send') LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO tandem_enqueuer', v_fn);
        END LOOP;
        v_granted := v_granted || 'tandem_enqueuer'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tandem_operator') THEN
        GRANT USAGE ON SCHEMA tandem TO tandem_operator;
        GRANT SELECT ON ALL TABLES IN SCHEMA tandem TO tandem_operator;
        FOR v_fn IN SELECT f.oid::regprocedure FROM pg_proc f
                     WHERE f.pronamespace = 'tandem'::regnamespace
                       AND f.proname IN ('send', 'cancel_workflow', 'resume_workflow',
                                         'fork_workflow', 'pause_schedule',
                                         'resume_schedule', 'clock_ms') LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO tandem_operator', v_fn);
        END LOOP;
        v_granted := v_granted || 'tandem_operator'::text;
    END IF;
    RETURN v_granted;
END
$grant$;

SELECT tandem.grant_roles();
