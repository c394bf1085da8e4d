-- DROP EXTENSION dlq keeps messages (DESIGN 7.1, issue 11 finding 11): a
-- command that would drop the extension fails with 2BP01 while dlq.messages
-- holds messages, unless the session sets dlq.drop_discards_messages = on.
-- Drops that succeed happen in a database of their own, so that this one
-- keeps its extension and the other files' objects.
-- (tests/t/084_drop_extension.pl: the same without shared_preload_libraries.)
SET client_min_messages = warning;
\set SHOW_CONTEXT never

-- The guard: an event trigger that only these three commands call.
SELECT evtname, evtevent, evtfoid::regprocedure, evtenabled, evttags
  FROM pg_event_trigger WHERE evtfoid = 'dlq.drop_guard'::regproc;
SELECT name, setting, context, vartype FROM pg_settings
 WHERE name = 'dlq.drop_discards_messages';

SELECT dlq_store('dx_q', '{"n": 1}', 'failed') > 0 AS stored;
SELECT dlq_test.err('DROP EXTENSION dlq');
SELECT dlq_test.err('DROP EXTENSION IF EXISTS sec_drop_no_such_extension, dlq CASCADE');
-- resolved messages are messages too
SELECT dlq_discard_all('dx_q')->>'discarded' AS discarded;
SELECT dlq_store('dx_q', '{"n": 2}', 'failed') AS dx_id \gset
SELECT dlq_resolve(ARRAY[:dx_id]::bigint[])->>'resolved' AS resolved;
SELECT dlq_test.err('DROP EXTENSION dlq');
-- PostgreSQL itself refuses to drop dlq's objects one by one
SELECT dlq_test.try('DROP SCHEMA dlq CASCADE');
SELECT dlq_test.try('DROP TABLE dlq.messages CASCADE');
-- unrelated drops go through, with the setting off
CREATE SCHEMA dx_other;
CREATE TABLE dx_other.t (id int);
SELECT dlq_test.try('DROP SCHEMA dx_other CASCADE');
SELECT dlq_test.try('DROP EXTENSION IF EXISTS sec_drop_no_such_extension');
-- the setting grants nothing: a role that may set it still cannot drop
CREATE ROLE sec_drop_user;
SET ROLE sec_drop_user;
SET dlq.drop_discards_messages = on;
SELECT dlq_test.try('DROP EXTENSION dlq');
RESET dlq.drop_discards_messages;
RESET ROLE;
DROP ROLE sec_drop_user;
-- nothing was dropped
SELECT extversion FROM pg_extension WHERE extname = 'dlq';
SELECT queue, status FROM dlq.messages WHERE queue = 'dx_q';

-- DROP SCHEMA ... CASCADE of the extension's schema, and DROP OWNED BY its
-- owner, would drop it too: in a database of their own, where a superuser
-- other than the bootstrap one owns the extension (DROP OWNED BY the
-- bootstrap superuser is refused by PostgreSQL anyway).
SELECT current_database() AS dx_regdb \gset
CREATE ROLE sec_drop_owner SUPERUSER;
CREATE DATABASE sec_drop_db;
\c sec_drop_db
SET client_min_messages = warning;
\set SHOW_CONTEXT never
-- This database's background worker runs rounds while these commands run,
-- and a DROP that reaches dlq's objects can deadlock with a round: ddl()
-- retries a deadlock, as a client would, and returns 'ok' or the error.
CREATE FUNCTION pg_temp.ddl(cmd text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..50 LOOP
        BEGIN
            EXECUTE cmd;
            RETURN 'ok';
        EXCEPTION
            WHEN deadlock_detected THEN
                PERFORM pg_sleep(0.1);
            WHEN OTHERS THEN
                RETURN SQLSTATE || ': ' || SQLERRM;
        END;
    END LOOP;
    RETURN 'still deadlocking';
END $$;
SET ROLE sec_drop_owner;
CREATE EXTENSION dlq;
SELECT dlq_store('dx_q', '{"n": 3}', 'failed') > 0 AS stored;
RESET ROLE;
SELECT pg_temp.ddl('DROP SCHEMA public CASCADE');
SELECT pg_temp.ddl('DROP OWNED BY sec_drop_owner');
SELECT pg_temp.ddl('DROP SCHEMA public');
SELECT extnamespace::regnamespace, extowner::regrole FROM pg_extension WHERE extname = 'dlq';
SELECT count(*) AS kept FROM dlq.messages;
-- with the setting on, DROP OWNED goes through
SET dlq.drop_discards_messages = on;
SELECT pg_temp.ddl('DROP OWNED BY sec_drop_owner');
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'dlq';
-- and so does DROP EXTENSION
CREATE EXTENSION dlq;
SELECT dlq_store('dx_q', '{"n": 4}', 'failed') > 0 AS stored;
SELECT pg_temp.ddl('DROP EXTENSION dlq');
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'dlq';
RESET dlq.drop_discards_messages;
-- an empty dlq is dropped without it
CREATE EXTENSION dlq;
SELECT count(*) AS messages FROM dlq.messages;
SELECT pg_temp.ddl('DROP EXTENSION dlq');
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'dlq';
\c :dx_regdb
SET client_min_messages = warning;
DROP DATABASE sec_drop_db WITH (FORCE);
DROP ROLE sec_drop_owner;

-- This database keeps its extension; only our messages go.
SELECT extversion FROM pg_extension WHERE extname = 'dlq';
SELECT dlq_discard_all('dx_q', status => 'resolved')->>'discarded' AS discarded;
DELETE FROM dlq.events WHERE queue = 'dx_q';
DELETE FROM dlq.queues WHERE queue = 'dx_q';
RESET client_min_messages;
