-- Isolate mode's binding: the intake trigger inserts into the table its
-- view reads, found through the view's query, and never into the table its
-- arguments name.  An OID written there (dlq_attach before this fix, and
-- every trigger pg_dump wrote then) names nothing, or another table, after
-- pg_restore (tests/t/090_dump_restore.pl); the view's query follows the
-- table through renames, dumps and restores.  A hostile role whose trigger
-- names another table writes only into the table its own view reads, with
-- its own privileges.  One kept plan per table, not one per statement.
\set VERBOSITY default
SET client_min_messages = warning;

CREATE ROLE sec_bind_owner LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_bind_hostile LOGIN IN ROLE dlq_writer;
GRANT CREATE ON SCHEMA public TO sec_bind_owner, sec_bind_hostile;
-- As an administrator might: the trigger's arguments are then text a
-- hostile role writes.
GRANT EXECUTE ON FUNCTION dlq_capture_isolate() TO sec_bind_hostile;

-- Kept plans of isolate mode's INSERT into tbl in this backend (1 on
-- PostgreSQL 13, which has no pg_backend_memory_contexts).
CREATE FUNCTION ib_plans(tbl text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_catalog.pg_backend_memory_contexts') IS NULL THEN
        RETURN 1;
    END IF;
    RETURN (SELECT count(*) FROM pg_catalog.pg_backend_memory_contexts
             WHERE name = 'CachedPlanSource' AND ident LIKE 'INSERT INTO ' || tbl || ' SELECT %');
END $$;

-- dlq_attach names the table in the trigger for readers; rows go to the
-- table the view reads.
SET ROLE sec_bind_owner;
CREATE TABLE ib_t (id int PRIMARY KEY, v int CHECK (v > 0));
SELECT dlq_attach('ib_t', 'ib_q', 'isolate');
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'ib_t_intake'::regclass;
INSERT INTO ib_t_intake VALUES ('1', '1'), ('2', '-2');
RESET ROLE;
SELECT payload, sqlstate, source_relation FROM dlq.messages WHERE queue = 'ib_q';

-- A hostile view over the hostile role's own table, whose trigger names the
-- owner's table and queue, by OID or by name: rows go into the hostile
-- table; failed ones record it as their source, so they are never replayed
-- into the owner's table.
SET ROLE sec_bind_hostile;
CREATE TABLE ib_h (id int PRIMARY KEY, v int CHECK (v > 0));
CREATE VIEW ib_h_intake AS SELECT id::text AS id, v::text AS v FROM ib_h WHERE false;
DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_h_intake FOR EACH ROW'
    ' EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'ib_q', 'ib_t'::regclass::oid); END $$;
INSERT INTO ib_h_intake VALUES ('10', '10'), ('11', '-11');
DROP TRIGGER dlq_intake ON ib_h_intake;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_h_intake FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_q', 'public.ib_t');
INSERT INTO ib_h_intake VALUES ('12', '12');
SELECT string_agg(id::text, ',' ORDER BY id) AS hostile_rows FROM ib_h;
RESET ROLE;
SELECT string_agg(id::text, ',' ORDER BY id) AS owner_rows FROM ib_t;
SELECT payload->>'id' AS id, source_relation FROM dlq.messages WHERE queue = 'ib_q' ORDER BY message_id;

-- A hostile view over the owner's table: the insert runs with the hostile
-- role's privileges, which do not reach the table (42501, nothing kept).
SET ROLE sec_bind_hostile;
CREATE VIEW ib_steal_intake AS SELECT id::text AS id, v::text AS v FROM ib_t WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_steal_intake FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq', 'public.ib_h');
SELECT dlq_test.err($$INSERT INTO ib_steal_intake VALUES ('20', '-20')$$);
-- Views that read no table, two tables, a view, or one of dlq's tables.
CREATE VIEW ib_none AS SELECT '1'::text AS id WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_none FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq', 'public.ib_h');
SELECT dlq_test.err($$INSERT INTO ib_none VALUES ('1')$$);
CREATE VIEW ib_two AS SELECT a.id::text AS id FROM ib_h a, ib_t b WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_two FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq', 'public.ib_h');
SELECT dlq_test.err($$INSERT INTO ib_two VALUES ('1')$$);
CREATE VIEW ib_of_view AS SELECT id FROM ib_h_intake WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_of_view FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq', 'public.ib_h');
SELECT dlq_test.err($$INSERT INTO ib_of_view VALUES ('1')$$);
CREATE VIEW ib_of_dlq AS SELECT queue FROM dlq.queues WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_of_dlq FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq', 'public.ib_h');
SELECT dlq_test.err($$INSERT INTO ib_of_dlq VALUES ('x')$$);
-- The target argument is still required, as the trigger's interface.
CREATE VIEW ib_one_arg AS SELECT id::text AS id FROM ib_h WHERE false;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_one_arg FOR EACH ROW
    EXECUTE FUNCTION dlq_capture_isolate('ib_hq');
SELECT dlq_test.err($$INSERT INTO ib_one_arg VALUES ('1')$$);
DROP VIEW ib_steal_intake, ib_none, ib_two, ib_of_view, ib_of_dlq, ib_one_arg;
RESET ROLE;
SELECT count(*) AS hostile_queue FROM dlq.messages WHERE queue = 'ib_hq';

-- The table renamed, and another one created under its old name: rows
-- still go to the table the view reads.  The plan kept under the old name
-- is replaced, not followed to the new table.
SET ROLE sec_bind_owner;
ALTER TABLE ib_t RENAME TO ib_t_renamed;
CREATE TABLE ib_t (id int PRIMARY KEY, v int CHECK (v > 0));
INSERT INTO ib_t_intake VALUES ('3', '3'), ('4', '-4');
SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM ib_t_renamed) AS renamed_rows,
       (SELECT count(*) FROM ib_t) AS decoy_rows;
RESET ROLE;
SELECT ib_plans('public.ib_t') AS old_name_plans;
-- Likewise when the table's schema is renamed and another takes its name.
CREATE SCHEMA ib_s;
CREATE TABLE ib_s.t (id int PRIMARY KEY);
SELECT dlq_attach('ib_s.t', 'ib_sq', 'isolate');
INSERT INTO ib_s.t_intake VALUES ('1');
ALTER SCHEMA ib_s RENAME TO ib_s2;
CREATE SCHEMA ib_s;
CREATE TABLE ib_s.t (id int PRIMARY KEY);
INSERT INTO ib_s2.t_intake VALUES ('2'), ('2');
SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM ib_s2.t) AS moved_rows,
       (SELECT count(*) FROM ib_s.t) AS decoy_rows,
       (SELECT string_agg(source_relation::text, ',') FROM dlq.messages WHERE queue = 'ib_sq') AS source;

-- One plan per table, not one per statement (each statement into the view
-- used to prepare and keep one more).
DO $$ BEGIN
    FOR i IN 100..119 LOOP
        INSERT INTO ib_t_intake VALUES (i::text, '1');
    END LOOP;
END $$;
SELECT count(*) AS loaded FROM ib_t_renamed WHERE id >= 100;
SELECT ib_plans('public.ib_t_renamed') AS plans;

-- A trigger as pg_restore brings back one dlq_attach made before this fix:
-- its OID argument names another table (here the decoy).  Rows still go to
-- the table the view reads, and dlq_detach still finds the view.
DROP TRIGGER dlq_intake ON ib_t_intake;
DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON ib_t_intake FOR EACH ROW'
    ' EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'ib_q', 'ib_t'::regclass::oid); END $$;
INSERT INTO ib_t_intake VALUES ('5', '5'), ('6', '-6');
SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM ib_t_renamed WHERE id < 100) AS renamed_rows,
       (SELECT count(*) FROM ib_t) AS decoy_rows;
SELECT payload->>'id' AS id, source_relation FROM dlq.messages
 WHERE queue = 'ib_q' AND payload->>'id' IN ('4', '6') ORDER BY message_id;
SET ROLE sec_bind_owner;
SELECT dlq_detach('ib_t_renamed');
SELECT to_regclass('ib_t_intake') AS view_gone;
RESET ROLE;
SELECT replay_target FROM dlq.queues WHERE queue = 'ib_q';

-- Clean up.
SELECT dlq_detach('ib_s2.t');
DROP SCHEMA ib_s, ib_s2 CASCADE;
DROP TABLE ib_t, ib_t_renamed, ib_h CASCADE;
DROP FUNCTION ib_plans(text);
DELETE FROM dlq.messages WHERE queue LIKE 'ib\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'ib\_%';
REVOKE EXECUTE ON FUNCTION dlq_capture_isolate() FROM sec_bind_hostile;
REVOKE CREATE ON SCHEMA public FROM sec_bind_owner, sec_bind_hostile;
DROP ROLE sec_bind_owner, sec_bind_hostile;
