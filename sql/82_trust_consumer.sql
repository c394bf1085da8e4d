-- Trust: consumers (DESIGN 7.1, issue 11 findings 8 and 9).
-- Who counts as a live consumer cannot be faked by a role without
-- dlq_operator; the consumer functions are the operator's; and the counts
-- of a hand-made dlq_capture trigger's commit-time flush are kept.
-- (Finding 7, nack racing a store, is in the isolation specs
-- nack_store_dedup and store_nack_recover_dedup; a blocked dlq_listen in
-- consumer_lock_hostile.)
\set VERBOSITY default
SET client_min_messages = warning;

CREATE ROLE sec_consumer_op LOGIN IN ROLE dlq_operator;
CREATE ROLE sec_consumer_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_consumer_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE sec_consumer_plain LOGIN;

-- How a replay went, without depending on the wording of its error.
CREATE FUNCTION pg_temp.reprocess(q text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dlq_reprocess_all(q);
    RETURN 'handed to consumers';
EXCEPTION WHEN OTHERS THEN
    RETURN CASE WHEN SQLERRM LIKE '%consumer%' THEN 'refused: no consumer'
                ELSE 'refused: ' || SQLSTATE || ': ' || SQLERRM END;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.reprocess(text) TO PUBLIC;
CREATE FUNCTION pg_temp.statuses(q text) RETURNS text
LANGUAGE sql AS $$
    SELECT string_agg(status::text, ',' ORDER BY message_id) FROM dlq.messages WHERE queue = q
$$;

SELECT (dlq_configure('sec_consumer_q', require_listener => true)).queue;
SELECT dlq_store('sec_consumer_q', '{"n": 1}', 'failed') > 0 AS stored;

------------------------------------------------------------------------------
-- Finding 9: a role without dlq_operator takes the advisory lock 1.0 used to
-- mark a live consumer, in every form the SQL functions offer.  Nobody is
-- listening, so the operator's replay is still refused and nothing moves.
------------------------------------------------------------------------------
SET ROLE sec_consumer_plain;
SELECT pg_advisory_lock(x'00444C51'::int, hashtext('sec_consumer_q')) IS NOT NULL AS exclusive_int4;
SELECT pg_advisory_lock_shared(x'00444C51'::int, hashtext('sec_consumer_q')) IS NOT NULL AS shared_int4;
SELECT pg_advisory_lock((x'00444C51'::bigint << 32) | (hashtext('sec_consumer_q')::bigint & x'FFFFFFFF'::bigint))
       IS NOT NULL AS exclusive_int8;
RESET ROLE;
SELECT count(*) AS fake_locks FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SET ROLE sec_consumer_op;
SELECT pg_temp.reprocess('sec_consumer_q') AS with_fake_consumer;
RESET ROLE;
SELECT pg_temp.statuses('sec_consumer_q') AS statuses;

-- The same from a writer and a reader: still nobody listening.
SET ROLE sec_consumer_writer;
SELECT pg_advisory_lock_shared(x'00444C51'::int, hashtext('sec_consumer_q')) IS NOT NULL AS writer_lock;
RESET ROLE;
SET ROLE sec_consumer_reader;
SELECT pg_advisory_lock_shared(x'00444C51'::int, hashtext('sec_consumer_q')) IS NOT NULL AS reader_lock;
RESET ROLE;
SET ROLE sec_consumer_op;
SELECT pg_temp.reprocess('sec_consumer_q') AS with_fake_consumers;
RESET ROLE;
SELECT pg_temp.statuses('sec_consumer_q') AS statuses;

-- Only dlq_operator may call the consumer functions.
SET ROLE sec_consumer_writer;
SELECT dlq_test.try($$SELECT dlq_listen('sec_consumer_q')$$) AS writer_listen;
SELECT dlq_test.try($$SELECT count(*) FROM dlq_claim('sec_consumer_q')$$) AS writer_claim;
SELECT dlq_test.try($$SELECT dlq_ack(ARRAY[1])$$) AS writer_ack;
SELECT dlq_test.try($$SELECT dlq_nack(1, 'no')$$) AS writer_nack;
RESET ROLE;
SET ROLE sec_consumer_reader;
SELECT dlq_test.try($$SELECT dlq_listen('sec_consumer_q')$$) AS reader_listen;
SELECT dlq_test.try($$SELECT count(*) FROM dlq_claim('sec_consumer_q')$$) AS reader_claim;
SELECT dlq_test.try($$SELECT dlq_ack(ARRAY[1])$$) AS reader_ack;
SELECT dlq_test.try($$SELECT dlq_nack(1, 'no')$$) AS reader_nack;
-- A reader sees messages but cannot lock them away from consumers, nor
-- lock the table in any mode that would hold up a claim, an ack or a nack.
SELECT dlq_test.try($$SELECT 1 FROM dlq.messages FOR SHARE$$) AS reader_row_lock;
SELECT dlq_test.try($$LOCK TABLE dlq.messages IN SHARE MODE$$) AS reader_table_lock;
SELECT dlq_test.try($$LOCK TABLE dlq.queues IN SHARE MODE$$) AS reader_queues_lock;
RESET ROLE;
SET ROLE sec_consumer_plain;
SELECT dlq_test.try($$SELECT dlq_listen('sec_consumer_q')$$) AS plain_listen;
SELECT dlq_test.try($$SELECT count(*) FROM dlq_claim('sec_consumer_q')$$) AS plain_claim;
RESET ROLE;

-- A real consumer registers with a lock that no SQL function can take
-- (so none can hold it up either), and the replay goes through.
SELECT pg_advisory_unlock_all();
SET ROLE sec_consumer_op;
SELECT dlq_listen('sec_consumer_q') AS channel;
-- (The registration outlives UNLISTEN; this keeps the notification out of
-- the output.)
UNLISTEN *;
RESET ROLE;
SELECT locktype, mode, granted, objsubid NOT IN (1, 2) AS not_an_sql_advisory_key
  FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SET ROLE sec_consumer_op;
SELECT pg_temp.reprocess('sec_consumer_q') AS with_real_consumer;
SELECT count(*) AS claimed FROM dlq_claim('sec_consumer_q');
RESET ROLE;
SELECT pg_temp.statuses('sec_consumer_q') AS statuses;

------------------------------------------------------------------------------
-- Finding 8: a hand-made dlq_capture trigger (no AFTER STATEMENT companion)
-- stores its diverted rows at commit.  When that is the first change to
-- dlq.messages in a backend, the counts were lost (etl_status showed 0
-- pending for 2 stored messages until dlq.recount()).
------------------------------------------------------------------------------
CREATE TABLE sec_consumer_load (id int PRIMARY KEY, v text);
CREATE TRIGGER capture BEFORE INSERT ON sec_consumer_load
    FOR EACH ROW EXECUTE FUNCTION dlq_capture('sec_consumer_load_q');
CREATE VIEW sec_consumer_mismatch AS
SELECT coalesce(m.queue, c.queue) AS queue, coalesce(m.status, c.status) AS status,
       m.n AS actual, c.n AS counted
  FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
  FULL JOIN (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
    USING (queue, status)
 WHERE m.n IS DISTINCT FROM c.n;
SELECT * FROM sec_consumer_mismatch;

-- A fresh backend whose first action is a COPY diverting two rows.
\c -
COPY sec_consumer_load FROM STDIN WITH (FORMAT csv);
1,a
1,duplicate
2,b
2,duplicate
\.
SELECT status, count(*) FROM dlq.messages WHERE queue = 'sec_consumer_load_q' GROUP BY 1;
SELECT * FROM sec_consumer_mismatch;
SELECT name, pending FROM etl_status() WHERE name = 'sec_consumer_load_q';

-- And one whose first action is an INSERT in an explicit transaction.
\c -
BEGIN;
INSERT INTO sec_consumer_load VALUES (3, 'c'), (3, 'duplicate');
INSERT INTO sec_consumer_load VALUES (1, 'duplicate');
COMMIT;
SELECT status, count(*) FROM dlq.messages WHERE queue = 'sec_consumer_load_q' GROUP BY 1;
SELECT * FROM sec_consumer_mismatch;

-- A savepoint rolled back in such a transaction takes its counts along.
\c -
BEGIN;
SAVEPOINT s;
INSERT INTO sec_consumer_load VALUES (2, 'rolled back');
ROLLBACK TO s;
INSERT INTO sec_consumer_load VALUES (2, 'kept');
COMMIT;
SELECT status, count(*) FROM dlq.messages WHERE queue = 'sec_consumer_load_q' GROUP BY 1;
SELECT * FROM sec_consumer_mismatch;

SET client_min_messages = warning;
DROP TABLE sec_consumer_load;
DROP VIEW sec_consumer_mismatch;
DROP ROLE sec_consumer_op, sec_consumer_writer, sec_consumer_reader, sec_consumer_plain;
