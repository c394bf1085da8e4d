-- dlq_capture: every constraint kind diverted with PostgreSQL's own error text.
\set VERBOSITY default
SET client_min_messages = warning;


CREATE TABLE cap_parent (pid int PRIMARY KEY);
INSERT INTO cap_parent VALUES (1), (2);
CREATE TABLE cap_orders (
    id int CONSTRAINT cap_orders_pkey PRIMARY KEY,
    code text UNIQUE,
    qty int NOT NULL CONSTRAINT qty_positive CHECK (qty > 0),
    pid int CONSTRAINT cap_orders_pid_fk REFERENCES cap_parent,
    note text
);
SELECT dlq_attach('cap_orders', 'cap_q');
SELECT queue, replay_target FROM dlq.queues WHERE queue = 'cap_q';

-- Good rows land; each bad row is skipped and kept with the exact error.
INSERT INTO cap_orders VALUES (1, 'a', 5, 1, 'ok');
INSERT INTO cap_orders VALUES (1, 'b', 5, 1, 'duplicate id');
INSERT INTO cap_orders VALUES (2, 'c', NULL, 1, 'null qty');
INSERT INTO cap_orders VALUES (3, 'd', -1, 1, 'negative qty');
INSERT INTO cap_orders VALUES (4, 'e', 1, 9, 'no parent');
INSERT INTO cap_orders VALUES (5, 'a', 1, NULL, 'duplicate code, NULL fk is fine');
INSERT INTO cap_orders VALUES (6, NULL, 1, NULL, 'NULL code and NULL fk are fine');
SELECT * FROM cap_orders ORDER BY id;
SELECT sqlstate, error, error_detail, payload->>'note' AS note, operation, source_relation
  FROM dlq.messages WHERE queue = 'cap_q' ORDER BY message_id;

-- The same errors PostgreSQL raises without the trigger.
SELECT dlq_detach('cap_orders');
SELECT dlq_test.err($$INSERT INTO cap_orders VALUES (1, 'b', 5, 1, 'duplicate id')$$);
SELECT dlq_test.err($$INSERT INTO cap_orders VALUES (2, 'c', NULL, 1, 'null qty')$$);
SELECT dlq_test.err($$INSERT INTO cap_orders VALUES (3, 'd', -1, 1, 'negative qty')$$);
SELECT dlq_test.err($$INSERT INTO cap_orders VALUES (4, 'e', 1, 9, 'no parent')$$);
SELECT dlq_test.err($$INSERT INTO cap_orders VALUES (5, 'a', 1, NULL, 'duplicate code, NULL fk is fine')$$);
SELECT dlq_attach('cap_orders', 'cap_q');

-- Duplicates within one statement: the first wins, the later ones are diverted.
DELETE FROM dlq.messages WHERE queue = 'cap_q';
INSERT INTO cap_orders SELECT 10 + g % 3, 'k' || g, g, 1, 'batch ' || g FROM generate_series(1, 7) g;
SELECT id, code, note FROM cap_orders WHERE id >= 10 ORDER BY id;
SELECT error, error_detail->>'detail' AS detail, payload->>'note' AS note
  FROM dlq.messages WHERE queue = 'cap_q' ORDER BY message_id;

-- COPY with mixed good and bad rows: the load goes on.
DELETE FROM dlq.messages WHERE queue = 'cap_q';
COPY cap_orders (id, code, qty, pid, note) FROM STDIN WITH (FORMAT csv);
20,c20,1,1,good
21,c21,0,1,check
22,c22,,1,not null
20,c23,1,2,duplicate in copy
23,c20,1,2,duplicate code in copy
24,c24,1,3,missing parent
25,c25,2,2,good
\.
SELECT id, code, note FROM cap_orders WHERE id >= 20 ORDER BY id;
SELECT sqlstate, error, error_detail->>'detail' AS detail, payload->>'note' AS note
  FROM dlq.messages WHERE queue = 'cap_q' ORDER BY message_id;

-- UPDATE: a row may keep its own key; a change that violates is diverted.
DELETE FROM dlq.messages WHERE queue = 'cap_q';
UPDATE cap_orders SET note = 'updated' WHERE id = 20;
UPDATE cap_orders SET id = 25 WHERE id = 20;
UPDATE cap_orders SET qty = -5 WHERE id = 25;
UPDATE cap_orders SET pid = 7 WHERE id = 25;
SELECT id, qty, pid, note FROM cap_orders WHERE id IN (20, 25) ORDER BY id;
SELECT sqlstate, error, error_detail->>'detail' AS detail, payload->>'id' AS id, operation
  FROM dlq.messages WHERE queue = 'cap_q' ORDER BY message_id;

-- Multi-column keys, MATCH FULL and MATCH SIMPLE.
CREATE TABLE cap_p2 (a int, b int, PRIMARY KEY (a, b));
INSERT INTO cap_p2 VALUES (1, 1);
CREATE TABLE cap_c2 (id int,
    a int, b int,
    CONSTRAINT c2_full FOREIGN KEY (a, b) REFERENCES cap_p2 MATCH FULL);
CREATE TABLE cap_c3 (id int,
    a int, b int,
    CONSTRAINT c3_simple FOREIGN KEY (a, b) REFERENCES cap_p2);
SELECT dlq_attach('cap_c2', 'cap_q2');
SELECT dlq_attach('cap_c3', 'cap_q3');
INSERT INTO cap_c2 VALUES (1, 1, 1), (2, 1, NULL), (3, NULL, NULL), (4, 2, 1);
INSERT INTO cap_c3 VALUES (1, 1, 1), (2, 1, NULL), (3, NULL, NULL), (4, 2, 1);
SELECT 'c2' AS t, id FROM cap_c2 UNION ALL SELECT 'c3', id FROM cap_c3 ORDER BY 1, 2;
SELECT queue, error, error_detail->>'detail' AS detail, payload->>'id' AS id
  FROM dlq.messages WHERE queue IN ('cap_q2', 'cap_q3') ORDER BY message_id;

-- Parents of other shapes: a bigint key for an int column (cross-type index
-- probe), a numeric key (no cross-type operator: SQL probe), a partitioned
-- parent (SQL probe); a parent inserted earlier in the same statement counts.
CREATE TABLE cap_pbig (id bigint PRIMARY KEY);
CREATE TABLE cap_pnum (id numeric PRIMARY KEY);
CREATE TABLE cap_ppart (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE cap_ppart_1 PARTITION OF cap_ppart FOR VALUES FROM (0) TO (100);
CREATE TABLE cap_ppart_2 PARTITION OF cap_ppart FOR VALUES FROM (100) TO (200);
INSERT INTO cap_pbig VALUES (1); INSERT INTO cap_pnum VALUES (1); INSERT INTO cap_ppart VALUES (1), (101);
CREATE TABLE cap_kids (id int PRIMARY KEY,
    b int CONSTRAINT kid_big REFERENCES cap_pbig,
    n int CONSTRAINT kid_num REFERENCES cap_pnum,
    p int CONSTRAINT kid_part REFERENCES cap_ppart,
    self int CONSTRAINT kid_self REFERENCES cap_kids);
SELECT dlq_attach('cap_kids', 'cap_kq');
INSERT INTO cap_kids VALUES (1, 1, 1, 1, NULL), (2, 2, 1, 1, NULL), (3, 1, 2, 1, NULL),
    (4, 1, 1, 2, NULL), (5, 1, 1, 1, 1), (6, 1, 1, 1, 7), (7, 1, 1, 1, 6), (8, 1, 1, 101, NULL);
-- Row 6 names a parent that comes later in the statement: diverted, although
-- the RI check at the end of the statement would have found it (documented).
SELECT id FROM cap_kids ORDER BY id;
SELECT payload->>'id' AS id, error, error_detail->>'detail' AS detail
  FROM dlq.messages WHERE queue = 'cap_kq' ORDER BY message_id;

-- Partitioned target: the trigger is cloned to every partition; the
-- partition's own unique index and the inherited constraints apply.
CREATE TABLE cap_events (id int, region text NOT NULL, amount int CHECK (amount >= 0),
    pid int CONSTRAINT cap_events_pid_fk REFERENCES cap_parent,
    PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE cap_events_eu PARTITION OF cap_events FOR VALUES IN ('eu');
SELECT dlq_attach('cap_events', 'cap_qp');
CREATE TABLE cap_events_us PARTITION OF cap_events FOR VALUES IN ('us');
INSERT INTO cap_events VALUES (1, 'eu', 1, 1), (1, 'us', 1, 1), (1, 'eu', 2, 1), (2, 'us', -1, 1), (3, 'us', 1, 9);
-- A row that matches no partition fails in routing, before any trigger: not captured.
SELECT dlq_test.err($$INSERT INTO cap_events VALUES (3, 'apac', 0)$$);
SELECT tableoid::regclass, * FROM cap_events ORDER BY region, id;
SELECT sqlstate, error, error_detail->>'detail' AS detail, error_detail->>'table' AS tab,
       source_relation, operation
  FROM dlq.messages WHERE queue = 'cap_qp' ORDER BY message_id;

-- Generated always identity and defaults are in the payload as inserted.
CREATE TABLE cap_ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text NOT NULL);
SELECT dlq_attach('cap_ident');
INSERT INTO cap_ident (v) VALUES ('x'), (NULL);
SELECT payload, error FROM dlq.messages WHERE queue = 'cap_ident';

-- Component argument in a hand-written trigger.
CREATE TABLE cap_manual (id int PRIMARY KEY);
CREATE TRIGGER t BEFORE INSERT ON cap_manual FOR EACH ROW EXECUTE FUNCTION dlq_capture('cap_manual_q', 'loader');
INSERT INTO cap_manual VALUES (1), (1);
SELECT component, error FROM dlq.messages WHERE queue = 'cap_manual_q';

-- Diverted rows are stored at the end of the statement (the AFTER STATEMENT
-- trigger dlq_attach adds) or, without it, at commit; a rolled-back
-- transaction or savepoint takes its diverted rows with it.
DELETE FROM dlq.messages WHERE queue = 'cap_manual_q';
BEGIN;
INSERT INTO cap_manual VALUES (1);
SELECT count(*) AS before_commit FROM dlq.messages WHERE queue = 'cap_manual_q';
SAVEPOINT s1;
INSERT INTO cap_manual VALUES (2), (2);
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO cap_manual VALUES (3), (3);
RELEASE s2;
COMMIT;
SELECT payload->>'id' AS id FROM dlq.messages WHERE queue = 'cap_manual_q' ORDER BY message_id;
BEGIN;
INSERT INTO cap_manual VALUES (1);
ROLLBACK;
SELECT count(*) AS after_rollback FROM dlq.messages WHERE queue = 'cap_manual_q';
-- With dlq_attach the statement's rows are visible to the next statement.
BEGIN;
INSERT INTO cap_orders VALUES (1, 'zz', 1, 1, 'in a transaction');
SELECT payload->>'note' AS note FROM dlq.messages WHERE queue = 'cap_q' AND payload->>'note' = 'in a transaction';
ROLLBACK;
SELECT count(*) FROM dlq.messages WHERE payload->>'note' = 'in a transaction';

-- Bad use of the trigger functions: clear errors.
CREATE TABLE cap_bad (id int);
CREATE TRIGGER t AFTER INSERT ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture('cap_bad_q');
SELECT dlq_test.err('INSERT INTO cap_bad VALUES (1)');
DROP TRIGGER t ON cap_bad;
INSERT INTO cap_bad VALUES (1);
CREATE TRIGGER t BEFORE DELETE ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture('cap_bad_q');
SELECT dlq_test.err('DELETE FROM cap_bad');
DROP TRIGGER t ON cap_bad;
CREATE TRIGGER t BEFORE INSERT ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture();
SELECT dlq_test.err('INSERT INTO cap_bad VALUES (1)');
DROP TRIGGER t ON cap_bad;
CREATE TRIGGER t BEFORE INSERT ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture('cap_bad_q', 'c', 'extra');
SELECT dlq_test.err('INSERT INTO cap_bad VALUES (1)');
DROP TRIGGER t ON cap_bad;
CREATE TRIGGER t BEFORE INSERT ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture('');
SELECT dlq_test.err('INSERT INTO cap_bad VALUES (1)');
DROP TRIGGER t ON cap_bad;
CREATE TRIGGER t BEFORE INSERT ON cap_bad FOR EACH ROW EXECUTE FUNCTION dlq_capture('cap_bad_q', '');
SELECT dlq_test.err('INSERT INTO cap_bad VALUES (1)');
DROP TRIGGER t ON cap_bad;
SELECT dlq_test.err('SELECT dlq_capture()');
SELECT count(*) FROM cap_bad;
SELECT count(*) FROM dlq.messages WHERE queue = 'cap_bad_q';
