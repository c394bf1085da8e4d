-- Trust: replays run as a role that could have done the write (DESIGN 7.1).
-- A hostile dlq_operator or dlq_writer must not get dlq to write where they
-- could not, nor run a table's triggers in a way that outlives the replay.
-- The worker's side (auto-retries as the queue's retry_role) is in
-- tests/t/080_trust_worker.pl.
SET client_min_messages = warning;
CREATE ROLE sec_replay_op LOGIN IN ROLE dlq_operator;
CREATE ROLE sec_replay_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_replay_owner LOGIN IN ROLE dlq_writer;
CREATE SCHEMA sec_replay;
GRANT USAGE, CREATE ON SCHEMA sec_replay TO sec_replay_op, sec_replay_owner;
GRANT USAGE ON SCHEMA sec_replay TO sec_replay_writer;
SET ROLE sec_replay_owner;
CREATE TABLE sec_replay.vt (id int PRIMARY KEY, amount int);
GRANT INSERT ON sec_replay.vt TO sec_replay_op;
RESET ROLE;
SET ROLE sec_replay_op;
CREATE TABLE sec_replay.op_t (id int PRIMARY KEY);
RESET ROLE;

-- replay_target binds a queue to a table: only its owner may, and never to
-- a system catalog or one of dlq's tables (finding 1).
SET ROLE sec_replay_op;
SELECT dlq_test.try($$SELECT dlq_configure('sec_replay_a', replay_target => 'pg_authid')$$);
SELECT dlq_test.try($$SELECT dlq_configure('sec_replay_a', replay_target => 'dlq.messages')$$);
SELECT dlq_test.try($$SELECT dlq_configure('sec_replay_a', replay_target => 'sec_replay.vt')$$);
SELECT dlq_test.try($$SELECT dlq_configure('sec_replay_a', replay_target => 'sec_replay.op_t')$$);
RESET ROLE;
SELECT queue, replay_target FROM dlq.queues WHERE queue = 'sec_replay_a';
-- Not a table stays 22023, as before.
SELECT dlq_test.try($$SELECT dlq_configure('sec_replay_a', replay_target => 'pg_tables'::regclass)$$);

-- The role that turns auto_retry on is recorded: the worker retries as it.
SET ROLE sec_replay_op;
SELECT retry_role FROM dlq_configure('sec_replay_a', auto_retry => true, retry_base => '1 hour');
RESET ROLE;
SELECT retry_role FROM dlq_configure('sec_replay_a', max_attempts => 4);
SELECT retry_role FROM dlq.queues WHERE queue = 'sec_replay_a';
-- Another operator rebinding the queue to a table of theirs does not make
-- the worker write there as this role: retry_role is cleared (suspended)
-- unless the rebinding call turns auto_retry on itself.
SELECT retry_role IS NULL AS suspended, auto_retry
  FROM dlq_configure('sec_replay_a', replay_target => 'sec_replay.vt');
SET ROLE sec_replay_op;
SELECT retry_role FROM dlq_configure('sec_replay_a', replay_target => 'sec_replay.op_t', auto_retry => true);
RESET ROLE;
SELECT retry_role FROM dlq_configure('sec_replay_a', replay_target => 'sec_replay.op_t');
SELECT auto_retry, retry_role IS NULL AS no_retry_role
  FROM dlq_configure('sec_replay_a', auto_retry => false);
SELECT detail FROM dlq.events WHERE queue = 'sec_replay_a' AND kind = 'configured' ORDER BY event_id;

-- Forged rows (finding 3): a writer stores a message into the queue of a
-- table it may not write; the operator's replay never inserts it there.
SELECT dlq_attach('sec_replay.vt', 'sec_replay_vt');
SET ROLE sec_replay_owner;
INSERT INTO sec_replay.vt VALUES (1, 10);
INSERT INTO sec_replay.vt VALUES (1, 20);
DELETE FROM sec_replay.vt;
RESET ROLE;
SET ROLE sec_replay_writer;
SELECT dlq_test.try($$INSERT INTO sec_replay.vt VALUES (99, 1000000)$$);
SELECT dlq_store('sec_replay_vt', '{"id": 99, "amount": 1000000}', 'forged') IS NOT NULL AS stored;
RESET ROLE;
SELECT payload, source_relation, status FROM dlq.messages WHERE queue = 'sec_replay_vt' ORDER BY message_id;
SET ROLE sec_replay_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed, r->'failures'->0->'sqlstate' AS sqlstate
  FROM dlq_reprocess_all('sec_replay_vt') r;
RESET ROLE;
SELECT id, amount FROM sec_replay.vt ORDER BY id;
SELECT payload->>'id' AS id, status, sqlstate, error_class, attempts, error
  FROM dlq.messages WHERE queue = 'sec_replay_vt' ORDER BY message_id;
-- (1.1: a replay_failed event also lists each failed attempt, for dlq_history)
SELECT kind, message_count, detail - 'attempts' AS detail,
       jsonb_path_query_array(detail, '$.attempts[*].sqlstate') AS attempt_sqlstates
  FROM dlq.events
 WHERE queue = 'sec_replay_vt' AND kind IN ('replayed', 'replay_failed') ORDER BY event_id;
-- Not even with force, and not by a superuser.
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('sec_replay_vt', force => true) r;
SELECT count(*) AS forged_rows FROM sec_replay.vt WHERE id = 99;
-- A message stored by hand into a queue without a replay target is a hand-off to
-- consumers, as before.
SELECT (dlq_configure('sec_replay_h', require_listener => false)).queue;
SELECT dlq_store('sec_replay_h', '{"id": 1}', 'e') IS NOT NULL AS stored;
SELECT dlq_reprocess_all('sec_replay_h') ->> 'replayed' AS replayed;

-- The target's triggers run as its owner in a security-restricted
-- operation: they cannot change the session's role for the rest of it
-- (PostgreSQL words the refusal for the switched user id).
SET ROLE sec_replay_owner;
CREATE TABLE sec_replay.st (id int PRIMARY KEY);
GRANT INSERT ON sec_replay.st TO sec_replay_op;
RESET ROLE;
SELECT dlq_attach('sec_replay.st', 'sec_replay_st');
SET ROLE sec_replay_owner;
INSERT INTO sec_replay.st VALUES (1);
INSERT INTO sec_replay.st VALUES (1);
DELETE FROM sec_replay.st;
CREATE FUNCTION sec_replay.st_role() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('role', 'none', false);
    RETURN NEW;
END $$;
CREATE TRIGGER st_role BEFORE INSERT ON sec_replay.st FOR EACH ROW EXECUTE FUNCTION sec_replay.st_role();
RESET ROLE;
SET ROLE sec_replay_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('sec_replay_st')$$);
SELECT current_user AS still, current_setting('role') AS role_setting;
RESET ROLE;
SELECT status, attempts FROM dlq.messages WHERE queue = 'sec_replay_st';

-- Backoff never overflows (finding 6): retry_base * retry_factor^(n-1) is
-- capped at retry_max, and at one year whatever retry_max says.
SELECT (dlq_configure('sec_replay_ovf', max_attempts => 1000, retry_factor => 1000)).queue;
SELECT (dlq_configure('sec_replay_def')).queue;
SELECT q.queue, n, dlq.retry_delay(q, n, 0.5) AS delay
  FROM dlq.queues q, unnest(ARRAY[-2147483648, 0, 1, 2, 3, 4, 39, 1000, 2147483647]) n
 WHERE q.queue IN ('sec_replay_ovf', 'sec_replay_def') ORDER BY 1, 2;
SELECT dlq.retry_delay(q, 1, 0) AS low, dlq.retry_delay(q, 1, 1) AS high
  FROM dlq.queues q WHERE q.queue = 'sec_replay_def';
UPDATE dlq.queues SET retry_max = '366 days', retry_factor = 'Infinity' WHERE queue = 'sec_replay_ovf';
SELECT n, dlq.retry_delay(q, n, 0.5) AS delay
  FROM dlq.queues q, unnest(ARRAY[1, 2, 1000]) n WHERE q.queue = 'sec_replay_ovf' ORDER BY n;
UPDATE dlq.queues SET retry_max = '1 hour', retry_factor = 1000 WHERE queue = 'sec_replay_ovf';
-- The worker's recovery of a timed-out replay that needs the 4th backoff
-- step (it failed with "interval out of range" and stalled every queue).
UPDATE dlq.queues SET auto_retry = true WHERE queue = 'sec_replay_ovf';
SELECT dlq_store('sec_replay_ovf', '{}', 'e') AS ovf \gset
UPDATE dlq.messages SET status = 'replaying', attempts = 3, claimed_by = 'c',
       claim_expires_at = now() - interval '1 minute'
 WHERE message_id = :ovf;
SELECT dlq.worker_recover(100, '10 seconds', 'tester', true, 'sec_replay_ovf') AS recovered;
SELECT status, attempts, next_retry_at - now() BETWEEN interval '59 minutes' AND interval '1 hour' AS capped
  FROM dlq.messages WHERE message_id = :ovf;
UPDATE dlq.queues SET auto_retry = false WHERE queue = 'sec_replay_ovf';

SELECT dlq_detach('sec_replay.vt');
SELECT dlq_detach('sec_replay.st');
DROP SCHEMA sec_replay CASCADE;
DELETE FROM dlq.messages WHERE queue LIKE 'sec\_replay\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sec\_replay\_%';
DROP ROLE sec_replay_op, sec_replay_writer, sec_replay_owner;
