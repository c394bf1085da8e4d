-- Binding a queue's replays to a handler function (dlq_configure's
-- replay_handler, DESIGN 7.1 and 7.3): only the function's owner may, never
-- to one of dlq's own functions, only a function of one jsonb or
-- dlq.message argument, and never together with a replay target.  And
-- retry_stop_ratio's range.  Replaying through the handler is tested in
-- sql/35_replay_handler.sql.
\set VERBOSITY terse
SET client_min_messages = warning;

CREATE ROLE hb_op LOGIN IN ROLE dlq_operator;
CREATE ROLE hb_other LOGIN IN ROLE dlq_operator;
GRANT CREATE ON SCHEMA public TO hb_op, hb_other;

SET ROLE hb_op;
CREATE FUNCTION hb_payload(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION hb_message(m dlq.message) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE FUNCTION hb_two(p jsonb, q int) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION hb_text(p text) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION hb_set(p jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE hb_proc(p jsonb) LANGUAGE sql AS 'SELECT';
CREATE TABLE hb_table (id int);

-- Both signatures bind; the configured event says which.
SELECT replay_handler, replay_target FROM dlq_configure('hb_q', replay_handler => 'hb_payload(jsonb)');
SELECT replay_handler FROM dlq_configure('hb_q', replay_handler => 'hb_message(dlq.message)');
SELECT detail ->> 'replay_handler' AS handler FROM dlq.events
 WHERE queue = 'hb_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;

-- Wrong shapes: 22023, nothing changed.
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 'hb_two(jsonb, int)')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 'hb_text(text)')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 'hb_set(jsonb)')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 'hb_proc(jsonb)')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 424242)$$);
SELECT replay_handler FROM dlq.queues WHERE queue = 'hb_q';

-- A handler and a replay target exclude each other (22023), in one call or
-- two; clearing one makes room for the other.
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_target => 'hb_table')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q2', replay_target => 'hb_table', replay_handler => 'hb_payload(jsonb)')$$);
SELECT replay_handler, replay_target FROM dlq_configure('hb_q', replay_handler => 0, replay_target => 'hb_table');
SELECT replay_handler, replay_target FROM dlq_configure('hb_q', replay_target => 0, replay_handler => 'hb_payload(jsonb)');
SELECT detail ->> 'replay_target' AS target, detail ->> 'replay_handler' AS handler FROM dlq.events
 WHERE queue = 'hb_q' AND kind = 'configured' AND detail ? 'replay_target' ORDER BY event_id;

-- Nor can a table be attached to a queue that has a handler (55000).
SELECT dlq_test.err($$SELECT dlq_attach('hb_table', 'hb_q')$$);
SELECT count(*) AS capture_triggers FROM pg_trigger WHERE tgrelid = 'hb_table'::regclass;

-- auto_retry records the caller as retry_role; binding another handler
-- without auto_retry => true clears it (the role agreed to run the old one).
SELECT retry_role FROM dlq_configure('hb_q', auto_retry => true);
SELECT retry_role FROM dlq_configure('hb_q', replay_handler => 'hb_payload(jsonb)');
SELECT retry_role FROM dlq_configure('hb_q', replay_handler => 'hb_message(dlq.message)');
SELECT retry_role FROM dlq_configure('hb_q', replay_handler => 'hb_payload(jsonb)', auto_retry => true);

-- Another operator may not bind hb_op's function (42501), nor any of
-- dlq's, nor a catalog function it does not own.
SET ROLE hb_other;
SELECT dlq_test.err($$SELECT dlq_configure('hb_other_q', replay_handler => 'hb_payload(jsonb)')$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_other_q', replay_handler => 'jsonb_typeof(jsonb)')$$);
SELECT count(*) AS other_queue FROM dlq.queues WHERE queue = 'hb_other_q';
RESET ROLE;
-- Not even a superuser binds dlq's own functions.
CREATE FUNCTION dlq.hb_inside(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', replay_handler => 'dlq.hb_inside(jsonb)')$$);
DROP FUNCTION dlq.hb_inside(jsonb);

-- retry_stop_ratio: (0, 1]; 0 clears it; NaN and out of range are 22023.
SELECT retry_stop_ratio FROM dlq_configure('hb_q', retry_stop_ratio => 0.25);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', retry_stop_ratio => 1.5)$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', retry_stop_ratio => -0.1)$$);
SELECT dlq_test.err($$SELECT dlq_configure('hb_q', retry_stop_ratio => 'NaN')$$);
SELECT retry_stop_ratio FROM dlq.queues WHERE queue = 'hb_q';
SELECT retry_stop_ratio FROM dlq_configure('hb_q', retry_stop_ratio => 1);
SELECT retry_stop_ratio FROM dlq_configure('hb_q', retry_stop_ratio => 0);
SELECT detail -> 'retry_stop_ratio' AS ratio FROM dlq.events
 WHERE queue = 'hb_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;

-- The table's own constraint backs the check for a direct write.
SELECT dlq_test.try($$UPDATE dlq.queues SET replay_target = 'hb_table' WHERE queue = 'hb_q'$$);

SET ROLE hb_op;
SELECT (dlq_configure('hb_q', replay_handler => 0, auto_retry => false)).replay_handler AS cleared;
RESET ROLE;
DROP FUNCTION hb_payload(jsonb), hb_message(dlq.message), hb_two(jsonb, int), hb_text(text),
    hb_set(jsonb);
DROP PROCEDURE hb_proc(jsonb);
DROP TABLE hb_table;
DELETE FROM dlq.queues WHERE queue IN ('hb_q', 'hb_q2', 'hb_other_q');
REVOKE CREATE ON SCHEMA public FROM hb_op, hb_other;
DROP ROLE hb_op, hb_other;
