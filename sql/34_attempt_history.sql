-- Every failed replay attempt keeps its SQLSTATE and error, and
-- dlq_history(id) shows each (attempt, sqlstate, error at the end); a
-- paused queue (55000) and a queue without a live consumer (DLQ01) fail
-- with different SQLSTATEs.
\set VERBOSITY default
SET client_min_messages = warning;

-- ---------------------------------------------------------------------------
-- Table replays: three failed attempts of one captured row, each for a
-- different reason, with an edit in between, then success.
-- ---------------------------------------------------------------------------
CREATE TABLE hist_c (cid int PRIMARY KEY);
CREATE TABLE hist_t (id int PRIMARY KEY, cid int REFERENCES hist_c, qty int CHECK (qty > 0));
SELECT dlq_attach('hist_t', 'hist_cap');
INSERT INTO hist_t VALUES (1, NULL, 0);
SELECT message_id AS h1 FROM dlq.messages WHERE queue = 'hist_cap' \gset
-- 1: still the CHECK (23514)
SELECT dlq_reprocess(ARRAY[:h1::bigint]) -> 'failed' AS failed;
-- 2: fixed quantity, but a customer that does not exist (23503)
SELECT payload FROM dlq_edit(:h1, '{"id": 1, "cid": 7, "qty": 2}', 'qty 2, customer 7');
SELECT dlq_reprocess(ARRAY[:h1::bigint]) -> 'failed' AS failed;
-- 3: the customer arrives, but someone inserted the key meanwhile (23505)
INSERT INTO hist_c VALUES (7);
INSERT INTO hist_t VALUES (1, NULL, 1);
SELECT dlq_reprocess(ARRAY[:h1::bigint]) -> 'failed' AS failed;
-- 4: the row is cleared away; the replay succeeds
DELETE FROM hist_t WHERE id = 1;
SELECT dlq_reprocess(ARRAY[:h1::bigint]) -> 'replayed' AS replayed;
SELECT * FROM hist_t;
SELECT kind, attempt, sqlstate, error, detail->'old_payload' AS old_payload
  FROM dlq_history(:h1) ORDER BY event_id;
-- The message itself has the last error and the attempt count.
SELECT status, attempts, sqlstate FROM dlq.messages WHERE message_id = :h1;

-- ---------------------------------------------------------------------------
-- Consumer nacks: three attempts, the consumer's SQLSTATEs (or none), the
-- error clipped to 1000 bytes in the event (the message keeps it whole).
-- ---------------------------------------------------------------------------
SELECT (dlq_configure('hist_n', require_listener => false)).queue;
SELECT dlq_store('hist_n', '{"n": 1}', 'failed at first') AS n1 \gset
SELECT dlq_reprocess(ARRAY[:n1::bigint]) -> 'notified' AS notified;
SELECT count(*) AS claimed FROM dlq_claim('hist_n');
SELECT dlq_nack(:n1, 'upstream timed out', '57014') AS status;
SELECT dlq_reprocess(ARRAY[:n1::bigint]) -> 'notified' AS notified;
SELECT dlq_nack(:n1, 'schema mismatch: ' || repeat('é', 700), '42804') AS status;
SELECT dlq_reprocess(ARRAY[:n1::bigint]) -> 'notified' AS notified;
SELECT dlq_nack(:n1, 'no reason given') AS status;
SELECT kind, attempt, sqlstate, left(error, 30) AS error, octet_length(error) AS error_bytes,
       detail ? 'status' AND detail ? 'error' AS keeps_1_0_keys
  FROM dlq_history(:n1) WHERE kind = 'nacked' ORDER BY event_id;
SELECT octet_length(error) AS message_error_bytes FROM dlq.messages WHERE message_id = :n1;

-- A replay the worker returns after its timeout is an attempt too (sqlstate
-- NULL).  dlq.worker_recover is the worker's step; a zero timeout returns it now.
SELECT dlq_reprocess(ARRAY[:n1::bigint]) -> 'notified' AS notified;
SELECT dlq.worker_recover(100, interval '0', 'hist test', true, 'hist_n') AS recovered;
SELECT kind, attempt, sqlstate, left(error, 50) AS error FROM dlq_history(:n1)
 WHERE attempt IS NOT NULL ORDER BY event_id;
SELECT status, attempts FROM dlq.messages WHERE message_id = :n1;

-- A folded nack (its dedup_key meanwhile held by another open message)
-- records the attempt on its "nacked" event, not on the "merged" one.
SELECT dlq_store('hist_n', '{"n": 2}', 'e', dedup_key => 'k') AS d1 \gset
SELECT dlq_reprocess(ARRAY[:d1::bigint]) -> 'notified' AS notified;
SELECT dlq_store('hist_n', '{"n": 3}', 'e', dedup_key => 'k') <> :d1 AS another;
SELECT dlq_nack(:d1, 'folded', '40001') AS status;
SELECT kind, attempt, sqlstate, error FROM dlq_history(:d1) ORDER BY event_id;

-- ---------------------------------------------------------------------------
-- One call failing many messages: one replay_failed event per 100 of them,
-- each naming its ids, so that every message's history finds its attempt.
-- ---------------------------------------------------------------------------
CREATE TABLE hist_many (id int PRIMARY KEY, v int CHECK (v > 0));
SELECT dlq_attach('hist_many', 'hist_many');
INSERT INTO hist_many SELECT g, 0 FROM generate_series(1, 250) g;
SELECT r->'failed' AS failed, jsonb_array_length(r->'failures') AS listed
  FROM dlq_reprocess_all('hist_many') r;
SELECT message_count, cardinality(message_ids) AS ids, jsonb_array_length(detail->'attempts') AS attempts
  FROM dlq.events WHERE queue = 'hist_many' AND kind = 'replay_failed' ORDER BY event_id;
SELECT count(*) AS messages,
       count(*) FILTER (WHERE (SELECT count(*) FROM dlq_history(m.message_id) h
                                WHERE h.attempt = 1 AND h.sqlstate = '23514') = 1) AS with_their_attempt
  FROM dlq.messages m WHERE m.queue = 'hist_many';

-- A row refused because it was not captured from the replay target is a
-- failed attempt (42501) as well, with the reason kept.
SELECT dlq_store('hist_many', '{"id": 999, "v": 1}', 'forged') AS f1 \gset
SELECT dlq_reprocess(ARRAY[:f1::bigint]) -> 'failed' AS failed;
SELECT kind, attempt, sqlstate, detail->>'reason' AS reason FROM dlq_history(:f1)
 WHERE kind = 'replay_failed';
SELECT count(*) AS not_inserted FROM hist_many WHERE id = 999;

-- dlq_history is for readers; events that are no attempt have NULLs.
CREATE ROLE hist_reader LOGIN IN ROLE dlq_reader;
SET ROLE hist_reader;
SELECT kind, attempt IS NULL AS no_attempt FROM dlq_history(:d1) WHERE kind <> 'nacked' ORDER BY event_id;
RESET ROLE;
SELECT count(*) AS unknown FROM dlq_history(-1);

-- ---------------------------------------------------------------------------
-- Paused queue 55000 (HTTP 409: the operator's decision), no live consumer
-- DLQ01 (HTTP 503: wait for a consumer and retry); both change nothing.
-- ---------------------------------------------------------------------------
SELECT (dlq_configure('hist_p', require_listener => false)).queue;
SELECT dlq_store('hist_p', '{"n": 1}', 'e') AS p1 \gset
SELECT dlq_pause('hist_p');
SELECT dlq_test.err(format('SELECT dlq_reprocess(ARRAY[%s])', :p1));
SELECT dlq_test.err($$SELECT dlq_reprocess_all('hist_p')$$);
SELECT (dlq_configure('hist_nc')).require_listener;
SELECT dlq_store('hist_nc', '{"n": 1}', 'e') AS q1 \gset
SELECT dlq_test.err(format('SELECT dlq_reprocess(ARRAY[%s])', :q1));
SELECT dlq_test.err($$SELECT dlq_reprocess_all('hist_nc')$$);
-- Paused wins when both hold: the operator's pause is the answer to give.
SELECT dlq_pause('hist_nc');
SELECT dlq_test.err($$SELECT dlq_reprocess_all('hist_nc')$$);
SELECT status, attempts FROM dlq.messages WHERE queue IN ('hist_p', 'hist_nc') ORDER BY message_id;
-- PL/pgSQL tells them apart by SQLSTATE.
DO $$
BEGIN
    PERFORM dlq_reprocess_all('hist_nc');
EXCEPTION WHEN SQLSTATE 'DLQ01' THEN
    RAISE NOTICE 'no consumer';
WHEN object_not_in_prerequisite_state THEN
    RAISE WARNING 'caught as 55000: %', SQLERRM;
END $$;
SELECT dlq_resume('hist_nc');
DO $$
BEGIN
    PERFORM dlq_reprocess_all('hist_nc');
EXCEPTION WHEN SQLSTATE 'DLQ01' THEN
    RAISE WARNING 'caught as DLQ01: %', SQLERRM;
END $$;

DROP ROLE hist_reader;
SELECT dlq_detach('hist_t'), dlq_detach('hist_many');
DROP TABLE hist_t, hist_c, hist_many;
DELETE FROM dlq.messages WHERE queue LIKE 'hist%';
DELETE FROM dlq.events WHERE queue LIKE 'hist%';
DELETE FROM dlq.queues WHERE queue LIKE 'hist%';
