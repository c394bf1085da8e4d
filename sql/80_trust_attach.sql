-- Trust: binding queues to tables (dlq_attach), removing what dlq made
-- (dlq_detach) and capture (dlq_capture, intake views), tried by hostile
-- roles that hold only dlq_writer or dlq_operator and CREATE on public.
-- Every refusal has a deliberate SQLSTATE and changes nothing.
\set VERBOSITY default
SET client_min_messages = warning;

CREATE ROLE sec_attach_op LOGIN IN ROLE dlq_operator;
CREATE ROLE sec_attach_w LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_attach_w2 LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_attach_team NOLOGIN IN ROLE dlq_writer;
CREATE ROLE sec_attach_member LOGIN IN ROLE sec_attach_team;
GRANT CREATE ON SCHEMA public TO sec_attach_op, sec_attach_w, sec_attach_w2, sec_attach_team;
GRANT SELECT ON dlq.queues, dlq.messages TO sec_attach_op, sec_attach_w, sec_attach_w2;

-- Every queue records the role that created it, whatever created it: dlq_store,
-- a capture trigger, dlq_attach, dlq_configure, dlq_listen.
SET ROLE sec_attach_w2;
SELECT dlq_store('sa_payments', '{"card": "4111", "amount": 10}', 'declined') > 0 AS stored;
CREATE TABLE sa_w2_t (id int PRIMARY KEY);
CREATE TRIGGER c BEFORE INSERT ON sa_w2_t FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_by_capture');
INSERT INTO sa_w2_t VALUES (1), (1);
RESET ROLE;
SET ROLE sec_attach_op;
SELECT (dlq_configure('sa_by_configure', require_listener => false)).created_by;
SELECT dlq_listen('sa_by_listen');
UNLISTEN *;
CREATE TABLE sa_op_t (id int PRIMARY KEY, amount int CHECK (amount > 0));
SELECT dlq_attach('sa_op_t');
RESET ROLE;
SELECT queue, created_by, replay_target FROM dlq.queues WHERE queue LIKE 'sa\_%' ORDER BY queue;

-- Finding 2: a writer cannot bind its own table to a queue somebody else
-- created, bound or not; the queue stays as it was.
SET ROLE sec_attach_w;
CREATE TABLE sa_loot (card text, amount int);
CREATE FUNCTION sa_steal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'stolen %', NEW.card; RETURN NEW; END $$;
CREATE TRIGGER aaa BEFORE INSERT ON sa_loot FOR EACH ROW EXECUTE FUNCTION sa_steal();
SELECT dlq_test.err($$SELECT dlq_attach('sa_loot', 'sa_payments')$$);
SELECT dlq_test.err($$SELECT dlq_attach('sa_loot', 'sa_payments', 'isolate')$$);
SELECT dlq_test.err($$SELECT dlq_attach('sa_loot', 'sa_op_t')$$);
SELECT dlq_test.err($$SELECT dlq_attach('sa_loot', 'sa_by_configure')$$);
SELECT count(*) AS loot_triggers FROM pg_trigger WHERE tgrelid = 'sa_loot'::regclass AND tgname <> 'aaa';
SELECT to_regclass('sa_loot_intake') AS no_view;
-- Its own queue, new or created by it and unbound, is fine.
SELECT dlq_store('sa_w_own', '{}', 'first') > 0 AS stored;
SELECT dlq_attach('sa_loot', 'sa_w_own');
SELECT dlq_detach('sa_loot');
SELECT dlq_attach('sa_loot', 'sa_w_own', 'isolate');
SELECT dlq_detach('sa_loot');
SELECT dlq_attach('sa_loot', 'sa_w_new');
SELECT dlq_detach('sa_loot');
RESET ROLE;
SELECT queue, created_by, replay_target FROM dlq.queues WHERE queue IN ('sa_payments', 'sa_op_t', 'sa_w_own', 'sa_w_new')
 ORDER BY queue;
-- Another writer cannot take the first one's unbound queue either.
SET ROLE sec_attach_w2;
SELECT dlq_test.err($$SELECT dlq_attach('sa_w2_t', 'sa_w_own')$$);
RESET ROLE;
-- Members of the creating role count as its creator, as with ownership.
SET ROLE sec_attach_team;
CREATE TABLE sa_team_t (id int PRIMARY KEY);
SELECT dlq_store('sa_team_q', '{}', 'e') > 0 AS stored;
RESET ROLE;
SET ROLE sec_attach_member;
SELECT dlq_attach('sa_team_t', 'sa_team_q');
SELECT dlq_detach('sa_team_t');
RESET ROLE;
-- A queue from 1.0 has no recorded creator: only a superuser may attach to it.
UPDATE dlq.queues SET created_by = NULL WHERE queue = 'sa_w_own';
SET ROLE sec_attach_w;
SELECT dlq_test.err($$SELECT dlq_attach('sa_loot', 'sa_w_own')$$);
RESET ROLE;
SELECT dlq_attach('sa_loot', 'sa_w_own');
SELECT dlq_detach('sa_loot');

-- Binding requires owning the table; dlq's own tables and the catalogs are
-- never bound, not even by a superuser.
SET ROLE sec_attach_w;
SELECT dlq_test.err($$SELECT dlq_attach('sa_op_t', 'sa_w_q2')$$);
SELECT dlq_test.err($$SELECT dlq_attach('dlq.messages', 'sa_w_q2')$$);
SELECT dlq_test.err($$SELECT dlq_attach('pg_authid', 'sa_w_q2')$$);
SELECT dlq_test.err($$SELECT dlq_detach('sa_op_t')$$);
RESET ROLE;
SELECT dlq_test.try($$SELECT dlq_attach('dlq.queues')$$);
SELECT dlq_test.try($$SELECT dlq_attach('dlq.messages')$$);
SELECT dlq_test.try($$SELECT dlq_attach('dlq.events', 'sa_x', 'isolate')$$);
SELECT dlq_test.try($$SELECT dlq_attach('dlq.counts')$$);
SELECT dlq_test.try($$SELECT dlq_attach('pg_class')$$);
SELECT dlq_test.try($$SELECT dlq_attach('pg_toast.pg_toast_1262')$$);
CREATE TABLE dlq.sa_extra (id int);
SELECT dlq_test.try($$SELECT dlq_attach('dlq.sa_extra')$$);
DROP TABLE dlq.sa_extra;
SELECT count(*) AS triggers_on_dlq_tables FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'dlq'::regnamespace AND NOT t.tgisinternal AND t.tgname LIKE '%dlq%';
SELECT count(*) AS no_new_queue FROM dlq.queues WHERE queue IN ('queues', 'messages', 'sa_x', 'counts', 'pg_class', 'sa_w_q2');

-- Finding 5: dlq_capture made by hand as a trigger on a dlq table refuses
-- cleanly instead of recursing into its own storage (on 1.0 the server
-- crashed: stack depth exceeded, then free(): invalid size and signal 6).
CREATE TRIGGER sa_loop BEFORE INSERT OR UPDATE ON dlq.queues FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_loop');
SELECT dlq_test.err($$INSERT INTO sa_op_t VALUES (1, 1), (1, 1)$$);
SELECT dlq_test.err($$SELECT dlq_store('sa_loop_store', '{}', 'e')$$);
DROP TRIGGER sa_loop ON dlq.queues;
CREATE TRIGGER sa_loop AFTER INSERT ON dlq.messages FOR EACH STATEMENT EXECUTE FUNCTION dlq_capture('sa_loop');
SELECT dlq_test.err($$SELECT dlq_store('sa_loop_store', '{}', 'e')$$);
DROP TRIGGER sa_loop ON dlq.messages;
SELECT 'the backend survived' AS alive;
SELECT count(*) AS loop_messages FROM dlq.messages WHERE queue LIKE 'sa\_loop%';

-- A flush that re-enters (a superuser's trigger on dlq.queues diverts more
-- rows while the buffer is being stored) never writes past the buffer and
-- loses no row: a full batch of 1000 diverted rows, then one more from the
-- trigger, all stored once.
CREATE TABLE sa_reenter (id int PRIMARY KEY);
SELECT dlq_attach('sa_reenter');
INSERT INTO sa_reenter VALUES (0);
CREATE FUNCTION sa_reenter_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sa.reenter', true) = 'on' THEN
        PERFORM set_config('sa.reenter', 'off', true);
        INSERT INTO public.sa_reenter VALUES (0);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sa_reenter BEFORE INSERT ON dlq.queues FOR EACH ROW EXECUTE FUNCTION sa_reenter_once();
BEGIN;
SELECT set_config('sa.reenter', 'on', true);
INSERT INTO sa_reenter SELECT 0 FROM generate_series(1, 1000);
COMMIT;
DROP TRIGGER sa_reenter ON dlq.queues;
SELECT count(*) AS reentered_rows FROM dlq.messages WHERE queue = 'sa_reenter';
SELECT 'the backend survived' AS alive;

-- A flush that fails inside a subtransaction keeps the rows buffered before
-- it, in the transaction that goes on: only the aborted subtransaction's
-- rows are dropped.  (1.0 emptied the buffer first and lost them.)
CREATE TABLE sa_keep (id int PRIMARY KEY);
CREATE TRIGGER c BEFORE INSERT ON sa_keep FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_keep');
CREATE TABLE sa_fail (id int PRIMARY KEY);
SELECT dlq_attach('sa_fail');
CREATE FUNCTION sa_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE queue = 'sa_fail') THEN
        RAISE EXCEPTION 'sa_fail refused';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sa_refuse AFTER INSERT ON dlq.messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sa_refuse();
BEGIN;
INSERT INTO sa_keep VALUES (1), (1);
SELECT dlq_test.try($$INSERT INTO sa_fail VALUES (1), (1)$$);
COMMIT;
DROP TRIGGER sa_refuse ON dlq.messages;
SELECT queue, count(*) FROM dlq.messages WHERE queue IN ('sa_keep', 'sa_fail') GROUP BY queue ORDER BY queue;

-- Rows that keep diverting rows while they are stored (a superuser's
-- trigger on dlq.messages feeding a captured table) end in a clear error at
-- commit, not an endless loop.
CREATE TABLE sa_echo (id int PRIMARY KEY);
INSERT INTO sa_echo VALUES (0);
CREATE TRIGGER c BEFORE INSERT ON sa_echo FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_echo');
CREATE FUNCTION sa_echo_more() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.sa_echo VALUES (0); RETURN NULL; END $$;
CREATE TRIGGER sa_echo AFTER INSERT ON dlq.messages FOR EACH STATEMENT EXECUTE FUNCTION sa_echo_more();
INSERT INTO sa_echo VALUES (0);
DROP TRIGGER sa_echo ON dlq.messages;
SELECT count(*) AS echoed FROM dlq.messages WHERE queue = 'sa_echo';

-- An intake trigger made by hand inserts into the table its view reads,
-- whatever table its arguments name (sql/89_isolate_binding.sql), and never
-- into one of dlq's: what captured rows record as their source is real.
CREATE TABLE sa_real (id int PRIMARY KEY);
CREATE VIEW sa_fake_intake AS SELECT id::text AS id FROM sa_real WHERE false;
DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON sa_fake_intake FOR EACH ROW'
    ' EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'sa_fake', 'sa_op_t'::regclass::oid); END $$;
INSERT INTO sa_fake_intake VALUES ('1'), ('1');
DROP TRIGGER dlq_intake ON sa_fake_intake;
DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON sa_fake_intake FOR EACH ROW'
    ' EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'sa_fake', 'dlq.messages'::regclass::oid); END $$;
INSERT INTO sa_fake_intake VALUES ('2');
SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM sa_real) AS into_real,
       (SELECT count(*) FROM sa_op_t) AS into_named;
CREATE VIEW sa_fake_messages AS SELECT message_id::text AS message_id FROM dlq.messages WHERE false;
DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON sa_fake_messages FOR EACH ROW'
    ' EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'sa_fake', 'sa_real'::regclass::oid); END $$;
SELECT dlq_test.err($$INSERT INTO sa_fake_messages VALUES ('1')$$);
DROP VIEW sa_fake_intake, sa_fake_messages;
SELECT source_relation, sqlstate FROM dlq.messages WHERE queue = 'sa_fake';

-- Finding 4: dlq_detach drops only what dlq made for that table, and only
-- what the caller owns.  After the owner renames an isolate-mode table,
-- another role's table with the old name is not attached.
SET ROLE sec_attach_w;
CREATE TABLE sa_iso (id int PRIMARY KEY);
SELECT dlq_attach('sa_iso', 'sa_iso_q', 'isolate');
ALTER TABLE sa_iso RENAME TO sa_iso_renamed;
RESET ROLE;
SET ROLE sec_attach_w2;
CREATE TABLE sa_iso (id int);
SELECT dlq_test.err($$SELECT dlq_detach('sa_iso')$$);
SELECT dlq_test.err($$SELECT dlq_attach('sa_iso', 'sa_w2_iso', 'isolate')$$);
RESET ROLE;
SELECT relname, pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relname = 'sa_iso_intake';
-- The owner still detaches the renamed table: its view is found by what it
-- is (its trigger and its dependency on the table), not by its name.
SET ROLE sec_attach_w;
SELECT dlq_test.err($$SELECT dlq_attach('sa_iso_renamed', 'sa_iso_q')$$);
SELECT dlq_detach('sa_iso_renamed');
SELECT to_regclass('sa_iso_intake') AS view_gone;
RESET ROLE;
DROP TABLE sa_iso;
-- A view or trigger dlq did not make is never dropped, whatever its name.
SET ROLE sec_attach_w2;
CREATE TABLE sa_look (id int);
CREATE VIEW sa_look_intake AS SELECT id::text AS id FROM sa_look WHERE false;
CREATE FUNCTION sa_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON sa_look_intake FOR EACH ROW EXECUTE FUNCTION sa_noop();
CREATE TRIGGER zzz_dlq_capture BEFORE INSERT ON sa_look FOR EACH ROW EXECUTE FUNCTION sa_noop();
SELECT dlq_test.err($$SELECT dlq_detach('sa_look')$$);
SELECT to_regclass('sa_look_intake') IS NOT NULL AS view_kept,
       (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sa_look'::regclass) AS triggers_kept;
RESET ROLE;
-- A table that changed owner: the intake view its old owner owns is no
-- longer its intake (a view only feeds a table its owner owns), so the new
-- owner's detach finds nothing (42704) and drops nothing, and a row through
-- the view is refused before anything is captured.  Given back, it is the
-- intake again.
SET ROLE sec_attach_w;
CREATE TABLE sa_moved (id int PRIMARY KEY);
SELECT dlq_attach('sa_moved', 'sa_moved_q', 'isolate');
RESET ROLE;
ALTER TABLE sa_moved OWNER TO sec_attach_w2;
SET ROLE sec_attach_w2;
SELECT dlq_test.err($$SELECT dlq_detach('sa_moved')$$);
RESET ROLE;
SET ROLE sec_attach_w;
SELECT dlq_test.try($$INSERT INTO sa_moved_intake VALUES ('x')$$);
RESET ROLE;
SELECT to_regclass('sa_moved_intake') IS NOT NULL AS view_kept,
       (SELECT replay_target FROM dlq.queues WHERE queue = 'sa_moved_q') AS still_bound,
       (SELECT count(*) FROM dlq.messages WHERE queue = 'sa_moved_q') AS captured;
ALTER TABLE sa_moved OWNER TO sec_attach_w;
SELECT dlq_detach('sa_moved');

-- Capture: source_relation is always the table the capturing trigger was
-- made on.  A writer's hand-made trigger on its own table into somebody
-- else's queue records its own table, which is not that queue's target.
SET ROLE sec_attach_w;
CREATE TABLE sa_wt (id int PRIMARY KEY, amount int);
CREATE TRIGGER c BEFORE INSERT ON sa_wt FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_op_t');
INSERT INTO sa_wt VALUES (7, 1000000), (7, 1000000);
RESET ROLE;
SELECT queue, source_relation, payload FROM dlq.messages WHERE queue = 'sa_op_t' ORDER BY message_id;
-- A partition the writer was given of the operator's attached table: rows
-- its own trigger diverts (it fires before the clone of the operator's)
-- record the partition, not the operator's table, so that they are never
-- replayed into it; rows the operator's attach diverts, through the clone
-- of its trigger on a partition, record the operator's table.
SET ROLE sec_attach_op;
CREATE TABLE sa_part (id int PRIMARY KEY, amount int CHECK (amount > 0)) PARTITION BY RANGE (id);
CREATE TABLE sa_part_w PARTITION OF sa_part FOR VALUES FROM (0) TO (100);
CREATE TABLE sa_part_op PARTITION OF sa_part FOR VALUES FROM (100) TO (200);
SELECT dlq_attach('sa_part');
RESET ROLE;
ALTER TABLE sa_part_w OWNER TO sec_attach_w;
SET ROLE sec_attach_w;
CREATE TRIGGER a_w BEFORE INSERT ON sa_part_w FOR EACH ROW EXECUTE FUNCTION dlq_capture('sa_part');
INSERT INTO sa_part_w VALUES (1, -5);
RESET ROLE;
SET ROLE sec_attach_op;
INSERT INTO sa_part VALUES (2, 5), (2, 6), (102, 5), (102, 6), (103, -1);
RESET ROLE;
SELECT payload->>'id' AS id, source_relation, sqlstate FROM dlq.messages WHERE queue = 'sa_part' ORDER BY message_id;
-- Row-level security: a row the writer's policy forbids is never diverted
-- (the policy is checked after BEFORE triggers, so a diverted row would
-- skip it and could be replayed by somebody the policy does not bind).
SET ROLE sec_attach_op;
CREATE TABLE sa_rls (id int PRIMARY KEY, who text, amount int CHECK (amount > 0));
ALTER TABLE sa_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON sa_rls USING (who = current_user) WITH CHECK (who = current_user);
GRANT SELECT, INSERT ON sa_rls TO sec_attach_w;
SELECT dlq_attach('sa_rls');
INSERT INTO sa_rls VALUES (1, 'sec_attach_op', -1);
RESET ROLE;
SET ROLE sec_attach_w;
SELECT dlq_test.err($$INSERT INTO sa_rls VALUES (2, 'sec_attach_op', -1)$$);
SELECT dlq_test.err($$INSERT INTO sa_rls VALUES (3, 'sec_attach_w', -1)$$);
INSERT INTO sa_rls VALUES (4, 'sec_attach_w', 4);
RESET ROLE;
SELECT payload->>'id' AS id, payload->>'who' AS who FROM dlq.messages WHERE queue = 'sa_rls' ORDER BY message_id;
-- Isolate mode: a role that may insert into the intake view but not into
-- the table gets the permission error; its rows are not captured for a
-- later replay by somebody who may write the table.
SET ROLE sec_attach_op;
CREATE TABLE sa_isop (id int PRIMARY KEY, amount int CHECK (amount > 0));
SELECT dlq_attach('sa_isop', 'sa_isop', 'isolate');
GRANT INSERT ON sa_isop_intake TO sec_attach_w;
INSERT INTO sa_isop_intake VALUES ('1', '-1');
RESET ROLE;
SET ROLE sec_attach_w;
SELECT dlq_test.err($$INSERT INTO sa_isop_intake VALUES ('2', '5')$$);
RESET ROLE;
SELECT payload->>'id' AS id, sqlstate FROM dlq.messages WHERE queue = 'sa_isop' ORDER BY message_id;

-- Other hostile inputs: the queue name is kept as given, never as SQL.
SET ROLE sec_attach_w;
CREATE TABLE "sa odd ""name""" (id int PRIMARY KEY);
SELECT dlq_attach('"sa odd ""name"""', $$sa_it's'); DROP TABLE sa_wt; --$$);
INSERT INTO "sa odd ""name""" VALUES (1), (1);
SELECT dlq_detach('"sa odd ""name"""');
SELECT to_regclass('sa_wt') IS NOT NULL AS still_there;
RESET ROLE;
SELECT queue, source_relation FROM dlq.messages WHERE queue LIKE 'sa\_it%';

-- An operator turned automatic retries on for a queue a writer created;
-- the writer then binds its own table: the worker must not retry into it
-- as the operator, so the binding drops the operator's retry_role.
SET ROLE sec_attach_w;
SELECT dlq_store('sa_autoq', '{"id": 1}', 'boom') > 0 AS stored;
RESET ROLE;
SET ROLE sec_attach_op;
SELECT queue, retry_role FROM dlq_configure('sa_autoq', auto_retry => true);
RESET ROLE;
SET ROLE sec_attach_w;
CREATE TABLE sa_autot (id int PRIMARY KEY);
SELECT dlq_attach('sa_autot', queue => 'sa_autoq');
RESET ROLE;
SELECT queue, replay_target, auto_retry, retry_role FROM dlq.queues WHERE queue = 'sa_autoq';

-- The statement trigger checks its table once per transaction (a replay
-- inserts each row in a statement of its own) until the table changes:
-- moved into dlq's schema in the same transaction, it is refused at once.
-- The INSERTs insert no row, so that only the statement trigger runs.
CREATE TABLE sa_cached (id int PRIMARY KEY);
SELECT dlq_attach('sa_cached');
BEGIN;
INSERT INTO sa_cached SELECT 1 WHERE false;
INSERT INTO sa_cached SELECT 1 WHERE false;
ALTER TABLE sa_cached SET SCHEMA dlq;
SELECT dlq_test.err($$INSERT INTO dlq.sa_cached SELECT 1 WHERE false$$);
ROLLBACK;
SELECT dlq_detach('sa_cached');
DROP TABLE sa_cached;

-- Clean up.
SELECT dlq_detach('sa_autot');
DROP TABLE sa_autot;
SELECT dlq_detach(c.oid::regclass) FROM pg_class c
 WHERE c.relname IN ('sa_op_t', 'sa_reenter', 'sa_part', 'sa_rls', 'sa_isop', 'sa_fail');
DROP TABLE sa_op_t, sa_reenter, sa_part, sa_rls, sa_isop, sa_w2_t, sa_loot, sa_team_t, sa_iso_renamed,
    sa_moved, sa_wt, "sa odd ""name""", sa_keep, sa_fail, sa_echo, sa_real;
DROP TABLE sa_look CASCADE;
DROP FUNCTION sa_reenter_once(), sa_steal(), sa_noop(), sa_refuse(), sa_echo_more();
DELETE FROM dlq.messages WHERE queue LIKE 'sa\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sa\_%';
REVOKE ALL ON dlq.queues, dlq.messages FROM sec_attach_op, sec_attach_w, sec_attach_w2;
REVOKE CREATE ON SCHEMA public FROM sec_attach_op, sec_attach_w, sec_attach_w2, sec_attach_team;
DROP ROLE sec_attach_op, sec_attach_w, sec_attach_w2, sec_attach_member, sec_attach_team;
