-- dlq_attach / dlq_detach: set-up, isolate mode, ownership and bad input.
\set VERBOSITY default
SET client_min_messages = warning;


CREATE TABLE att_t (id int PRIMARY KEY, v int CHECK (v > 0), d date, j jsonb);

-- Default queue is the table name.  A second attach with the same queue and
-- mode sets the table's reject limits (none here, 55_reject_limits); with
-- another queue or mode it is refused.
SELECT dlq_attach('att_t');
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'att_t'::regclass ORDER BY tgname;
SELECT queue, replay_target, channel FROM dlq.queues WHERE queue = 'att_t';
SELECT dlq_test.try($$SELECT dlq_attach('att_t')$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t', 'other', 'isolate')$$);
SELECT dlq_detach('att_t');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'att_t'::regclass;
SELECT queue, replay_target FROM dlq.queues WHERE queue = 'att_t';
SELECT dlq_test.try($$SELECT dlq_detach('att_t')$$);
SELECT kind, actor, queue, detail FROM dlq.events WHERE queue = 'att_t' ORDER BY event_id;

-- Bad input: each error with its SQLSTATE, and nothing changed.
CREATE VIEW att_v AS SELECT 1 AS x;
CREATE SEQUENCE att_s;
SELECT count(*) AS queues_before FROM dlq.queues \gset
SELECT dlq_test.try($$SELECT dlq_attach(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t', 'q', NULL)$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t', 'q', 'bogus')$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t', '')$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t', repeat('x', 64))$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_v')$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_s')$$);
SELECT dlq_test.try($$SELECT dlq_attach('no_such_table')$$);
SELECT dlq_test.try($$SELECT dlq_attach(12345::oid::regclass)$$);
SELECT dlq_test.try($$SELECT dlq_detach(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_detach('att_v')$$);
SELECT count(*) = :queues_before AS no_new_queue FROM dlq.queues;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'att_t'::regclass;

-- A queue replays into one table only.
CREATE TABLE att_t2 (id int);
SELECT dlq_attach('att_t', 'att_shared');
SELECT dlq_test.try($$SELECT dlq_attach('att_t2', 'att_shared')$$);
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'att_t2'::regclass;
SELECT dlq_detach('att_t');

-- Isolate mode: an intake view of text columns; every error is caught,
-- type coercion and errors of other triggers included.
CREATE FUNCTION att_no_13() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 13 THEN
        RAISE EXCEPTION 'unlucky row %', NEW.id USING ERRCODE = 'P0013', DETAIL = 'Thirteen is refused.';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER att_no_13 BEFORE INSERT ON att_t FOR EACH ROW EXECUTE FUNCTION att_no_13();
SELECT dlq_attach('att_t', 'att_iso', 'isolate');
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'att_t_intake'::regclass AND attnum > 0 ORDER BY attnum;
SELECT dlq_test.try($$SELECT dlq_attach('att_t', 'att_iso')$$);
COPY att_t_intake FROM STDIN WITH (FORMAT csv);
1,5,2024-01-01,"{""a"": 1}"
2,x,2024-01-02,
3,5,2024-02-30,
13,1,2024-01-03,
1,6,2024-01-04,
4,-1,,
5,7,,"[1, 2]"
\.
SELECT * FROM att_t ORDER BY id;
SELECT sqlstate, error, error_detail->>'constraint' AS con, payload->>'id' AS id, payload->>'v' AS v,
       source_relation, operation
  FROM dlq.messages WHERE queue = 'att_iso' ORDER BY message_id;
SELECT replay_target FROM dlq.queues WHERE queue = 'att_iso';
-- Detach drops the view; the messages stay.
SELECT dlq_detach('att_t');
SELECT to_regclass('att_t_intake') AS view_gone;
SELECT count(*) FROM dlq.messages WHERE queue = 'att_iso';
-- A table name too long for the view.
CREATE TABLE att_a_very_long_table_name_that_is_already_fifty_nine_bytes_l (id int);
SELECT dlq_test.try($$SELECT dlq_attach('att_a_very_long_table_name_that_is_already_fifty_nine_bytes_l', 'att_long', 'isolate')$$);
-- An existing relation with the view's name.
CREATE TABLE att_t2_intake (x int);
SELECT dlq_test.try($$SELECT dlq_attach('att_t2', 'att_t2q', 'isolate')$$);

-- Ownership: dlq_writer members may attach their own tables only.
CREATE ROLE att_owner LOGIN IN ROLE dlq_writer;
CREATE ROLE att_other LOGIN IN ROLE dlq_writer;
CREATE ROLE att_plain LOGIN;
GRANT CREATE ON SCHEMA public TO att_owner;
SET ROLE att_owner;
CREATE TABLE att_mine (id int PRIMARY KEY);
GRANT INSERT, SELECT, TRIGGER ON att_mine TO att_other;
SELECT dlq_attach('att_mine', 'att_mine_q', 'isolate');
SELECT dlq_detach('att_mine');
SELECT dlq_attach('att_mine', 'att_mine_q');
INSERT INTO att_mine VALUES (1), (1);
SELECT count(*) AS rows FROM att_mine;
SET ROLE att_other;
-- Not the owner: refused even with TRIGGER privilege, nothing changes.
SELECT dlq_test.try($$SELECT dlq_detach('att_mine')$$);
SELECT dlq_test.try($$SELECT dlq_attach('att_t2', 'att_other_q')$$);
-- Inserting through the attached table needs no DLQ privilege.
INSERT INTO att_mine VALUES (2), (2);
SET ROLE att_plain;
SELECT dlq_test.try($$SELECT dlq_attach('att_t2', 'att_plain_q')$$);
RESET ROLE;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'att_t2'::regclass;
SELECT queue, error FROM dlq.messages WHERE queue = 'att_mine_q' ORDER BY message_id;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'att_mine'::regclass ORDER BY tgname;
SET ROLE att_owner;
SELECT dlq_detach('att_mine');
RESET ROLE;
DROP TABLE att_mine;
REVOKE CREATE ON SCHEMA public FROM att_owner;
DROP ROLE att_owner, att_other, att_plain;
