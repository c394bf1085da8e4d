-- Replay into a table with failures caught per row (1.1): an error that
-- capture's prediction cannot see (a trigger that raises, a value that no
-- longer converts) fails that row's message, recorded like a predicted
-- violation; the other rows go in and the call returns.  What a failing
-- row's triggers wrote is undone; what a good row's wrote is kept.  Rows
-- run a few per subtransaction, not one each: a subtransaction that writes
-- takes a transaction id, which is how this file counts them.
\set VERBOSITY default
SET client_min_messages = warning;

CREATE TABLE rf_log (id int, note text);
CREATE TABLE rf_t (id int PRIMARY KEY, v int CHECK (v > 0));
SELECT dlq_attach('rf_t', 'rf_q');
SELECT (dlq_configure('rf_q', max_attempts => 2)).queue;
-- 200 rows captured (v = 0 breaks the CHECK), then their payloads fixed.
INSERT INTO rf_t SELECT g, 0 FROM generate_series(1, 200) g;
SELECT count(*) AS captured FROM dlq.messages WHERE queue = 'rf_q';
UPDATE dlq.messages SET payload = jsonb_set(payload, '{v}', to_jsonb((payload->>'id')::int))
 WHERE queue = 'rf_q';

-- A BEFORE trigger (the table owner's code) that logs every row, then
-- raises for every 50th with its own SQLSTATE.
CREATE FUNCTION rf_check() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    INSERT INTO rf_log VALUES (NEW.id, 'seen');
    IF NEW.id % 50 = 0 THEN
        RAISE EXCEPTION 'row % refused', NEW.id USING ERRCODE = 'RF001', DETAIL = 'every 50th';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER a_check BEFORE INSERT ON rf_t FOR EACH ROW EXECUTE FUNCTION rf_check();

-- Every subtransaction writes, so takes a transaction id: far fewer than
-- the 200 rows.
SELECT pg_current_xact_id() AS x0 \gset
SELECT r - 'request_id' - 'failures' AS summary,
       (SELECT jsonb_agg(f - 'message_id' ORDER BY (f->>'message_id')::bigint)
          FROM jsonb_array_elements(r->'failures') f) AS failures
  FROM dlq_reprocess_all('rf_q') r;
SELECT pg_current_xact_id()::text::bigint - :'x0'::text::bigint - 1 <= 20 AS at_most_20_xids;
-- 196 rows in; the four refused are pending with their error.
SELECT count(*) AS rows_in, min(id), max(id) FROM rf_t;
SELECT payload->>'id' AS id, status, attempts, sqlstate, error_class, error,
       error_detail->>'detail' AS detail
  FROM dlq.messages WHERE queue = 'rf_q' AND status <> 'resolved' ORDER BY message_id;
-- The trigger's log keeps the rows that went in, once each, and nothing of
-- the refused ones: their writes were rolled back with them.
SELECT count(*) AS logged, count(DISTINCT id) AS distinct_ids,
       count(*) FILTER (WHERE id % 50 = 0) AS of_refused FROM rf_log;
-- Audit: one replayed event, one replay_failed with the attempts.
SELECT kind, message_count,
       (SELECT jsonb_agg(a->>'sqlstate') FROM jsonb_array_elements(detail->'attempts') a) AS sqlstates
  FROM dlq.events WHERE queue = 'rf_q' AND kind IN ('replayed', 'replay_failed') ORDER BY event_id;

-- Replayed again: they fail again and go to review (max_attempts 2).
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rf_q') r;
SELECT status, count(*), max(attempts) FROM dlq.messages WHERE queue = 'rf_q' GROUP BY status ORDER BY status;

-- Every row failing: each still recorded, one subtransaction each, no more
-- (the trigger writes before it raises: each takes a transaction id).
DELETE FROM rf_t;
DELETE FROM rf_log;
DROP TRIGGER a_check ON rf_t;
CREATE FUNCTION rf_refuse_all() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    INSERT INTO rf_log VALUES (NEW.id, 'refused');
    RAISE EXCEPTION 'no' USING ERRCODE = 'RF002';
END $$;
CREATE TRIGGER a_refuse BEFORE INSERT ON rf_t FOR EACH ROW EXECUTE FUNCTION rf_refuse_all();
SELECT pg_current_xact_id() AS x0 \gset
SELECT r->'replayed' AS replayed, r->'failed' AS failed, r->'failures'->0->>'sqlstate' AS sqlstate
  FROM dlq_reprocess_all('rf_q', force => true) r;
SELECT pg_current_xact_id()::text::bigint - :'x0'::text::bigint - 1 <= 4 + 2 AS one_xid_per_row;
SELECT count(*) AS logged FROM rf_log;
SELECT status, count(*), max(attempts), min(sqlstate) AS sqlstate
  FROM dlq.messages WHERE queue = 'rf_q' GROUP BY status ORDER BY status;
DROP TRIGGER a_refuse ON rf_t;

-- A payload that no longer converts ("5" is not a date) fails its row
-- only; the others of the same call go in.
CREATE TABLE rf_d (id int PRIMARY KEY, d date CONSTRAINT rf_recent CHECK (d > '2025-01-01'));
SELECT dlq_attach('rf_d', 'rf_dq');
INSERT INTO rf_d VALUES (1, '2024-01-01'), (2, '2024-01-02'), (3, '2024-01-03');
SELECT count(*) AS captured FROM dlq.messages WHERE queue = 'rf_dq';
ALTER TABLE rf_d DROP CONSTRAINT rf_recent;
UPDATE dlq.messages SET payload = jsonb_set(payload, '{d}', '"5"')
 WHERE queue = 'rf_dq' AND payload->>'d' = '2024-01-02';
SELECT r->'replayed' AS replayed, r->'failed' AS failed,
       r->'failures'->0->>'sqlstate' AS sqlstate, r->'failures'->0->>'error' AS error
  FROM dlq_reprocess_all('rf_dq') r;
SELECT d FROM rf_d ORDER BY d;
SELECT status, sqlstate
  FROM dlq.messages WHERE queue = 'rf_dq' ORDER BY message_id;

-- A replay target's trigger may not start a replay (55000, that row's failure).
CREATE TABLE rf_r (id int PRIMARY KEY);
SELECT dlq_attach('rf_r', 'rf_rq');
INSERT INTO rf_r VALUES (1), (1);
DELETE FROM rf_r;
CREATE FUNCTION rf_recurse() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    PERFORM dlq_reprocess_all('rf_rq');
    RETURN NEW;
END $$;
CREATE TRIGGER a_recurse BEFORE INSERT ON rf_r FOR EACH ROW EXECUTE FUNCTION rf_recurse();
SELECT r->'replayed' AS replayed, r->'failed' AS failed,
       r->'failures'->0->>'sqlstate' AS sqlstate, r->'failures'->0->>'error' AS error
  FROM dlq_reprocess_all('rf_rq') r;
SELECT count(*) AS rows_in FROM rf_r;

-- Query cancel is never a row's failure: a statement_timeout stops the call
-- (57014) and nothing of it is kept.
DROP TRIGGER a_recurse ON rf_r;
CREATE FUNCTION rf_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_sleep(1);
    RETURN NEW;
END $$;
CREATE TRIGGER a_slow BEFORE INSERT ON rf_r FOR EACH ROW EXECUTE FUNCTION rf_slow();
SET statement_timeout = '100ms';
\set VERBOSITY sqlstate
SELECT dlq_reprocess_all('rf_rq');
\set VERBOSITY default
RESET statement_timeout;
SELECT status, attempts FROM dlq.messages WHERE queue = 'rf_rq' ORDER BY message_id;

SELECT dlq_detach('rf_t');
SELECT dlq_detach('rf_d');
SELECT dlq_detach('rf_r');
