-- A 200k-row COPY with 10% bad rows through dlq_capture consumes O(1)
-- transaction ids: no subtransaction per row, good or bad.
SET client_min_messages = warning;

CREATE TABLE xid_parent (pid int PRIMARY KEY);
INSERT INTO xid_parent SELECT generate_series(1, 10);
CREATE TABLE xid_load (id int PRIMARY KEY, pid int REFERENCES xid_parent,
    qty int NOT NULL CHECK (qty > 0), note text);
SELECT dlq_attach('xid_load', 'xid_q');

-- The input: every 10th row is bad, cycling through the four kinds.
CREATE TEMP TABLE xid_src AS
SELECT CASE WHEN g % 40 = 0 THEN g - 1 ELSE g END AS id,           -- duplicate of the row before
       CASE WHEN g % 40 = 10 THEN 99 ELSE g % 10 + 1 END AS pid,    -- missing parent
       CASE WHEN g % 40 = 20 THEN NULL WHEN g % 40 = 30 THEN -1 ELSE 1 END AS qty,
       'row ' || g AS note
  FROM generate_series(1, 200000) g;
SELECT current_setting('data_directory') || '/dlq_xid_test.csv' AS csv \gset
COPY xid_src TO :'csv' WITH (FORMAT csv);

SELECT pg_current_xact_id()::text::bigint AS xid_before \gset
COPY xid_load FROM :'csv' WITH (FORMAT csv);
-- 2 here (this statement's and the COPY's); a subtransaction per row would be ~200000.
SELECT pg_current_xact_id()::text::bigint - :xid_before BETWEEN 1 AND 10 AS o1_xids;

SELECT count(*) AS loaded FROM xid_load;
SELECT sqlstate, count(*) FROM dlq.messages WHERE queue = 'xid_q' GROUP BY sqlstate ORDER BY sqlstate;
-- No row is lost: every input row is in the table or in the DLQ.
SELECT (SELECT count(*) FROM xid_load) + (SELECT count(*) FROM dlq.messages WHERE queue = 'xid_q') AS accounted;
SELECT dlq_detach('xid_load');
