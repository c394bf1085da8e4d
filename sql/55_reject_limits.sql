-- Reject limits (dlq_attach max_errors, max_error_ratio): a statement that
-- diverts more rows than its table's budget fails with SQLSTATE DLQ02 and
-- keeps nothing, neither its rows nor the messages of its failed rows,
-- whether they were still buffered or stored in a batch already; also in a
-- savepoint or a PL/pgSQL exception block whose transaction commits.  And
-- COPY FROM records the input line of each captured row (metadata
-- copy_line), only for rows of the COPY's own table.
SET client_min_messages = warning;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- rl.ok(queue, table, n_messages, n_rows): does the queue hold n messages,
-- the table n rows, and dlq.counts agree with dlq.messages?
CREATE SCHEMA rl;
CREATE FUNCTION rl.ok(q text, t regclass, msgs int, rows_ int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    m bigint := (SELECT count(*) FROM dlq.messages WHERE queue = q);
    c bigint := (SELECT coalesce(sum(n), 0) FROM dlq.counts WHERE queue = q);
    r bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', t) INTO r;
    IF m <> msgs OR r <> rows_ OR c <> m THEN
        RETURN format('wrong: %s messages (%s expected), %s rows (%s expected), counts %s', m, msgs, r, rows_, c);
    END IF;
    RETURN 'ok';
END $$;

CREATE TABLE rl_t (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0));

-- 1. max_errors: more than n diverted rows in one statement fail it.
SELECT dlq_attach('rl_t', 'rl_q', max_errors => 2);
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'rl_t'::regclass ORDER BY tgname;
-- two bad rows of ten: within the budget
INSERT INTO rl_t SELECT i, CASE WHEN i IN (3, 7) THEN -1 ELSE i END FROM generate_series(1, 10) i;
SELECT rl.ok('rl_q', 'rl_t', 2, 8);
-- three bad rows: the statement fails, nothing of it is kept
SELECT dlq_test.err($$INSERT INTO rl_t SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE i END
                      FROM generate_series(11, 20) i$$);
SELECT rl.ok('rl_q', 'rl_t', 2, 8);
-- a multi-row INSERT, and an UPDATE
SELECT dlq_test.try($$INSERT INTO rl_t VALUES (21, 1), (22, -1), (2, 5), (23, 0)$$);
SELECT dlq_test.try($$UPDATE rl_t SET v = -v WHERE id BETWEEN 1 AND 4$$);
UPDATE rl_t SET v = -v WHERE id IN (1, 2);
SELECT rl.ok('rl_q', 'rl_t', 4, 8);
-- COPY stops at the row past the budget: its line is in the error's context
\set VERBOSITY sqlstate
COPY rl_t FROM STDIN;
30	1
31	-1
32	-2
33	-3
34	1
\.
\set VERBOSITY default
\set SHOW_CONTEXT always
COPY rl_t FROM STDIN;
30	1
31	-1
32	-2
33	-3
34	1
\.
\set SHOW_CONTEXT never
SELECT rl.ok('rl_q', 'rl_t', 4, 8);

-- 2. max_errors => 0: the first failed row fails the statement.
SELECT dlq_attach('rl_t', 'rl_q', max_errors => 0);
SELECT dlq_test.try($$INSERT INTO rl_t VALUES (40, 1), (41, -1)$$);
INSERT INTO rl_t VALUES (40, 1);
SELECT rl.ok('rl_q', 'rl_t', 4, 9);

-- 3. max_error_ratio, taken of at least 100 rows.  dlq_attach again with
-- the same queue (or none) and mode replaces both limits.
SELECT dlq_attach('rl_t', max_error_ratio => 0.1);
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'rl_t'::regclass ORDER BY tgname;
-- 20 bad rows of 200 (0.1): passes
INSERT INTO rl_t SELECT i, CASE WHEN i % 10 = 0 THEN -1 ELSE i END FROM generate_series(101, 300) i;
SELECT rl.ok('rl_q', 'rl_t', 24, 189);
-- 21 of 200: fails at the end of the statement
SELECT dlq_test.err($$INSERT INTO rl_t SELECT i, CASE WHEN i % 10 = 0 OR i = 301 THEN -1 ELSE i END
                      FROM generate_series(301, 500) i$$);
SELECT rl.ok('rl_q', 'rl_t', 24, 189);
-- one bad row of a one-row INSERT is diverted (1 <= 0.1 * 100) ...
INSERT INTO rl_t VALUES (501, -1);
-- ... 10 of 50 too, but 11 of 50 fail
INSERT INTO rl_t SELECT i, CASE WHEN i <= 511 THEN -1 ELSE i END FROM generate_series(502, 551) i;
SELECT rl.ok('rl_q', 'rl_t', 35, 229);
SELECT dlq_test.err($$INSERT INTO rl_t SELECT i, CASE WHEN i <= 611 THEN -1 ELSE i END
                      FROM generate_series(601, 650) i$$);
SELECT rl.ok('rl_q', 'rl_t', 35, 229);

-- 4. Both limits: whichever is passed first.
SELECT dlq_attach('rl_t', 'rl_q', 'validate', 5, 0.5);
SELECT dlq_test.try($$INSERT INTO rl_t SELECT i, CASE WHEN i <= 706 THEN -1 ELSE i END
                      FROM generate_series(701, 900) i$$);
SELECT dlq_test.try($$INSERT INTO rl_t SELECT i, CASE WHEN i <= 705 THEN -1 ELSE i END
                      FROM generate_series(701, 900) i$$);
SELECT rl.ok('rl_q', 'rl_t', 40, 424);
SELECT kind, detail FROM dlq.events WHERE queue = 'rl_q' ORDER BY event_id;

-- 5. Nothing is kept of a failed statement, also when messages were stored
-- in batches (every 1000 diverted rows) before it failed, and when a
-- savepoint or an exception block catches the error and the transaction
-- commits; what the transaction did before stays.
CREATE TABLE rl_s (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0));
SELECT dlq_attach('rl_s', 'rl_sq', max_errors => 2500);
BEGIN;
INSERT INTO rl_s VALUES (1, 1), (2, -1);
SAVEPOINT a;
-- 3000 bad rows: two batches stored, the statement fails at the 2501st
INSERT INTO rl_s SELECT i, -1 FROM generate_series(10, 3009) i;
ROLLBACK TO a;
INSERT INTO rl_s VALUES (3, -1);
COMMIT;
SELECT rl.ok('rl_sq', 'rl_s', 2, 1);
-- COPY and a ratio: stored batches are undone by the failure at the end
SELECT dlq_attach('rl_s', max_error_ratio => 0.5);
BEGIN;
SAVEPOINT a;
COPY rl_s FROM PROGRAM 'seq 10 3009 | sed "s/\$/\t-1/"';
ROLLBACK TO a;
INSERT INTO rl_s VALUES (4, 4);
COMMIT;
SELECT rl.ok('rl_sq', 'rl_s', 2, 2);
-- a PL/pgSQL exception block, whose transaction commits
SELECT dlq_attach('rl_s', max_errors => 1500);
DO $$
BEGIN
    INSERT INTO rl_s VALUES (5, -5);
    BEGIN
        INSERT INTO rl_s SELECT i, CASE WHEN i % 2 = 0 THEN -1 ELSE i END FROM generate_series(10, 4009) i;
    EXCEPTION WHEN SQLSTATE 'DLQ02' THEN
        RAISE WARNING 'caught: %', SQLERRM;
    END;
END $$;
SELECT rl.ok('rl_sq', 'rl_s', 3, 2);

-- 6. A statement run inside another (by a trigger of the same table) has a
-- budget of its own: the outer statement's rows are counted apart.
CREATE TABLE rl_n (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0));
CREATE FUNCTION rl.inner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id % 100 = 0 THEN
        INSERT INTO rl_n VALUES (NEW.id + 1, -1);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa BEFORE INSERT ON rl_n FOR EACH ROW EXECUTE FUNCTION rl.inner();
SELECT dlq_attach('rl_n', 'rl_nq', max_errors => 1);
-- outer: one bad row; inner: one bad row; each within its own budget
INSERT INTO rl_n VALUES (1, -1), (100, 1), (2, 2);
SELECT rl.ok('rl_nq', 'rl_n', 2, 2);
-- outer: two bad rows, the inner statement ended in between
SELECT dlq_test.try($$INSERT INTO rl_n VALUES (3, -1), (200, 1), (4, -1)$$);
SELECT rl.ok('rl_nq', 'rl_n', 2, 2);

-- 7. Isolate mode: the intake view carries the budget.
CREATE TABLE rl_i (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0));
SELECT dlq_attach('rl_i', 'rl_iq', 'isolate', max_errors => 1);
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) ~ 'max_errors=1' AS has_limit
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relname IN ('rl_i', 'rl_i_intake') ORDER BY 1, 2;
INSERT INTO rl_i_intake VALUES ('1', '1'), ('2', 'x');
SELECT dlq_test.err($$INSERT INTO rl_i_intake VALUES ('3', '-1'), ('4', '4'), ('1', '1')$$);
SELECT rl.ok('rl_iq', 'rl_i', 1, 1);
SELECT dlq_attach('rl_i', mode => 'isolate', max_error_ratio => 0.01);
SELECT dlq_test.try($$INSERT INTO rl_i_intake VALUES ('3', '-1'), ('4', '4'), ('1', '1')$$);
SELECT dlq_attach('rl_i', mode => 'isolate');
INSERT INTO rl_i_intake VALUES ('3', '-1'), ('4', '4'), ('1', '1');
SELECT rl.ok('rl_iq', 'rl_i', 3, 2);
SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relname IN ('rl_i', 'rl_i_intake') ORDER BY 1, 2;
-- an intake view given to a role that does not own the table is no longer
-- its intake (it feeds only a table its owner owns): attaching again finds
-- none and refuses to make a second view over the first (42P07)
CREATE ROLE rl_owner IN ROLE dlq_writer;
CREATE ROLE rl_viewer;
GRANT CREATE ON SCHEMA public TO rl_owner;
SET ROLE rl_owner;
CREATE TABLE rl_j (id int PRIMARY KEY);
SELECT dlq_attach('rl_j', 'rl_jq', 'isolate', max_errors => 1);
RESET ROLE;
ALTER VIEW rl_j_intake OWNER TO rl_viewer;
SET ROLE rl_owner;
SELECT dlq_test.err($$SELECT dlq_attach('rl_j', mode => 'isolate', max_errors => 5)$$);
RESET ROLE;

-- 8. Bad input, 22023; another queue or mode still needs dlq_detach (42710).
SELECT dlq_test.err($$SELECT dlq_attach('rl_t', max_errors => -1)$$);
SELECT dlq_test.err($$SELECT dlq_attach('rl_t', max_error_ratio => 1)$$);
SELECT dlq_test.try($$SELECT dlq_attach('rl_t', max_error_ratio => -0.1)$$);
SELECT dlq_test.try($$SELECT dlq_attach('rl_t', max_error_ratio => 'NaN')$$);
SELECT dlq_test.err($$SELECT dlq_attach('rl_t', 'rl_other', max_errors => 1)$$);
SELECT dlq_test.try($$SELECT dlq_attach('rl_t', 'rl_q', 'isolate', max_errors => 1)$$);
-- a hand-made statement trigger with a bad limit fails the statement
CREATE TABLE rl_h (id int, v int NOT NULL);
CREATE TRIGGER b BEFORE INSERT ON rl_h FOR EACH STATEMENT EXECUTE FUNCTION dlq_capture('rl_hq', 'max_errors=lots');
CREATE TRIGGER r BEFORE INSERT ON rl_h FOR EACH ROW EXECUTE FUNCTION dlq_capture('rl_hq');
SELECT dlq_test.err($$INSERT INTO rl_h VALUES (1, NULL)$$);
DROP TRIGGER b ON rl_h;
CREATE TRIGGER b BEFORE INSERT ON rl_h FOR EACH STATEMENT EXECUTE FUNCTION dlq_capture('rl_hq');
SELECT dlq_test.try($$INSERT INTO rl_h VALUES (1, NULL)$$);
-- the 1.0 signature's three arguments still work
CREATE TABLE rl_old (id int PRIMARY KEY);
SELECT dlq_attach('rl_old', 'rl_oldq', 'validate');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'rl_old'::regclass;

-- 9. Only the table's owner sets or removes its limits.
CREATE ROLE rl_hostile LOGIN IN ROLE dlq_writer;
GRANT USAGE ON SCHEMA rl TO rl_hostile;
GRANT INSERT, SELECT ON rl_t TO rl_hostile;
SET ROLE rl_hostile;
SELECT dlq_test.err($$SELECT dlq_attach('rl_t', 'rl_q', max_errors => 1000000)$$);
SELECT dlq_test.err($$SELECT dlq_attach('rl_t', 'rl_q')$$);
SELECT dlq_test.try($$SELECT dlq_detach('rl_t')$$);
-- the limits hold for the hostile role's own statements too
SELECT dlq_test.try($$INSERT INTO rl_t SELECT i, -1 FROM generate_series(1001, 1010) i$$);
RESET ROLE;
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'rl_t'::regclass ORDER BY tgname;

-- 10. dlq_detach removes the limits with the capture triggers.
SELECT dlq_detach('rl_t');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'rl_t'::regclass;
SELECT kind, detail FROM dlq.events WHERE queue = 'rl_q' AND detail ? 'detached';

-- 11. COPY line numbers: metadata copy_line of each row a COPY diverted is
-- its line in the input (a header is line 1); other statements' rows have
-- none, and neither have rows a trigger writes into the table during a
-- COPY into another table.
CREATE TABLE rl_c (id int PRIMARY KEY, v int NOT NULL CHECK (v > 0));
SELECT dlq_attach('rl_c', 'rl_cq');
COPY rl_c FROM STDIN WITH (FORMAT csv, HEADER true);
id,v
1,1
2,-2
3,3
1,4
5,
\.
INSERT INTO rl_c VALUES (6, -6);
SELECT payload->>'id' AS id, sqlstate, metadata FROM dlq.messages WHERE queue = 'rl_cq' ORDER BY message_id;
-- a COPY into another table whose trigger writes rl_c: no line
CREATE TABLE rl_other (id int, v int);
CREATE FUNCTION rl.fwd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rl_c VALUES (NEW.id, NEW.v);
    RETURN NULL;
END $$;
CREATE TRIGGER fwd BEFORE INSERT ON rl_other FOR EACH ROW EXECUTE FUNCTION rl.fwd();
COPY rl_other FROM STDIN;
7	7
8	-8
\.
SELECT payload->>'id' AS id, metadata FROM dlq.messages WHERE queue = 'rl_cq' AND payload->>'id' = '8';
-- a partitioned table attached on its parent: the COPY into the parent
CREATE TABLE rl_p (id int, v int NOT NULL CHECK (v > 0)) PARTITION BY RANGE (id);
CREATE TABLE rl_p1 PARTITION OF rl_p FOR VALUES FROM (0) TO (100);
CREATE TABLE rl_p2 PARTITION OF rl_p FOR VALUES FROM (100) TO (200);
SELECT dlq_attach('rl_p', 'rl_pq', max_errors => 5);
COPY rl_p FROM STDIN;
1	1
150	-1
2	-2
199	9
\.
SELECT payload->>'id' AS id, metadata FROM dlq.messages WHERE queue = 'rl_pq' ORDER BY message_id;
-- isolate mode: a COPY into the intake view
COPY rl_i_intake FROM STDIN;
10	10
11	x
12	-12
\.
SELECT payload->>'id' AS id, sqlstate, metadata FROM dlq.messages WHERE queue = 'rl_iq'
 ORDER BY message_id;

RESET client_min_messages;
DROP VIEW rl_j_intake;
DROP TABLE rl_j;
DROP OWNED BY rl_hostile, rl_owner, rl_viewer;
DROP ROLE rl_hostile, rl_owner, rl_viewer;
