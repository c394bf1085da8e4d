-- Replay of captured rows into their table: fixed cause, still failing,
-- missing privilege, partitioned target, isolate-mode payloads.
\set VERBOSITY default
SET client_min_messages = warning;


CREATE TABLE rp_customer (cid int PRIMARY KEY);
INSERT INTO rp_customer VALUES (1);
CREATE TABLE rp_orders (id int PRIMARY KEY, cid int NOT NULL REFERENCES rp_customer,
    qty int CHECK (qty > 0), at timestamptz DEFAULT '2024-01-01 00:00+00');
SELECT dlq_attach('rp_orders', 'rp_q');
COPY rp_orders (id, cid, qty) FROM STDIN WITH (FORMAT csv);
1,1,1
2,2,1
3,3,1
4,1,0
1,1,5
\.
SELECT id, cid, qty FROM rp_orders ORDER BY id;
SELECT message_id AS m_missing2 FROM dlq.messages WHERE queue = 'rp_q' AND payload->>'id' = '2' \gset
SELECT payload->>'id' AS id, sqlstate, attempts, status FROM dlq.messages WHERE queue = 'rp_q' ORDER BY message_id;

-- Fix one cause (customer 2 arrives), then replay everything.
INSERT INTO rp_customer VALUES (2);
SELECT r - 'request_id' - 'failures' AS summary,
       (SELECT jsonb_agg(f - 'message_id' ORDER BY f->>'error') FROM jsonb_array_elements(r->'failures') f) AS failures
  FROM dlq_reprocess_all('rp_q') r;
-- Row 2 is in the table, with its default kept from capture time.
SELECT id, cid, qty, at FROM rp_orders ORDER BY id;
-- Still failing rows: the same message records the new attempt; no new message.
SELECT payload->>'id' AS id, status, attempts, sqlstate, error, error_detail->>'detail' AS detail
  FROM dlq.messages WHERE queue = 'rp_q' ORDER BY message_id;
SELECT status FROM dlq.messages WHERE message_id = :m_missing2;

-- Replay that fails again after the table changed: new error recorded.
ALTER TABLE rp_orders ADD CONSTRAINT rp_cid_small CHECK (cid < 3);
INSERT INTO rp_customer VALUES (3);
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_q') r;
SELECT payload->>'id' AS id, status, attempts, error
  FROM dlq.messages WHERE queue = 'rp_q' AND status <> 'resolved' ORDER BY message_id;
ALTER TABLE rp_orders DROP CONSTRAINT rp_cid_small;

-- An operator without INSERT on the table: 42501, and nothing changes.
CREATE ROLE rp_op LOGIN IN ROLE dlq_operator;
SELECT count(*) AS rows_before FROM rp_orders \gset
CREATE TEMP TABLE rp_before AS SELECT message_id, status, attempts, error FROM dlq.messages WHERE queue = 'rp_q';
SET ROLE rp_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_q')$$);
RESET ROLE;
SELECT count(*) = :rows_before AS rows_unchanged FROM rp_orders;
SELECT count(*) AS messages_changed FROM dlq.messages m JOIN rp_before b USING (message_id)
 WHERE (m.status, m.attempts, m.error) IS DISTINCT FROM (b.status, b.attempts, b.error);
-- With INSERT (but no SELECT) the replay succeeds.
GRANT INSERT ON rp_orders TO rp_op;
SET ROLE rp_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_q') r;
RESET ROLE;
SELECT id, cid, qty FROM rp_orders ORDER BY id;
SELECT payload->>'id' AS id, status FROM dlq.messages WHERE queue = 'rp_q' ORDER BY message_id;
REVOKE ALL ON rp_orders FROM rp_op;
DROP ROLE rp_op;

-- A duplicate that is still a duplicate, replayed twice in one call
-- through dlq_reprocess by id.
CREATE TABLE rp_u (k text PRIMARY KEY, v int);
SELECT dlq_attach('rp_u', 'rp_uq');
INSERT INTO rp_u VALUES ('a', 1), ('a', 2), ('a', 3);
SELECT array_agg(message_id ORDER BY message_id) AS ids FROM dlq.messages WHERE queue = 'rp_uq' \gset
DELETE FROM rp_u;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess(:'ids') r;
SELECT * FROM rp_u;
SELECT payload->>'v' AS v, status, attempts, error FROM dlq.messages WHERE queue = 'rp_uq' ORDER BY message_id;

-- Partitioned target: replayed through the root; the partition's trigger
-- validates and a violation is reported, not diverted again.
CREATE TABLE rp_ev (id int, region text, amount int CHECK (amount >= 0), PRIMARY KEY (region, id))
    PARTITION BY LIST (region);
CREATE TABLE rp_ev_eu PARTITION OF rp_ev FOR VALUES IN ('eu');
SELECT dlq_attach('rp_ev', 'rp_evq');
INSERT INTO rp_ev VALUES (1, 'eu', 1), (1, 'eu', 2), (2, 'eu', -1);
DELETE FROM rp_ev;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_evq') r;
SELECT * FROM rp_ev ORDER BY id;
SELECT payload->>'id' AS id, status, attempts, error FROM dlq.messages WHERE queue = 'rp_evq' ORDER BY message_id;
SELECT count(*) AS total_messages FROM dlq.messages WHERE queue = 'rp_evq';

-- Isolate mode payloads are text; replay converts them like the intake did.
CREATE TABLE rp_iso (id int PRIMARY KEY, d date, n numeric NOT NULL);
SELECT dlq_attach('rp_iso', 'rp_isoq', 'isolate');
INSERT INTO rp_iso_intake VALUES ('1', '2024-01-01', '1.5'), ('2', '2024-01-02', NULL);
SELECT payload, error FROM dlq.messages WHERE queue = 'rp_isoq';
UPDATE dlq.messages SET payload = payload || '{"n": "2.25"}' WHERE queue = 'rp_isoq';
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_isoq') r;
SELECT * FROM rp_iso ORDER BY id;

-- Every kind of column survives capture and replay: json(b) values, domains,
-- booleans, numerics, timestamps; arrays go through jsonb_populate_record.
CREATE DOMAIN rp_pos AS int CHECK (VALUE > 0);
CREATE TABLE rp_types (id int PRIMARY KEY, ok boolean, n numeric, at timestamptz, p rp_pos,
    j jsonb, js json, s text, flag text NOT NULL);
CREATE TABLE rp_arrays (id int PRIMARY KEY, tags text[], flag text NOT NULL);
SELECT dlq_attach('rp_types', 'rp_typesq');
SELECT dlq_attach('rp_arrays', 'rp_arraysq');
INSERT INTO rp_types VALUES
    (1, true, 1.50, '2024-05-01 10:00+00', 3, '{"a": [1, "x"]}', '"str"', 'he said "hi"', NULL),
    (2, NULL, NULL, NULL, NULL, '"just a string"', '12', NULL, NULL);
INSERT INTO rp_arrays VALUES (1, ARRAY['a', 'b c'], NULL), (2, '{}', NULL);
SELECT payload FROM dlq.messages WHERE queue IN ('rp_typesq', 'rp_arraysq') ORDER BY message_id;
UPDATE dlq.messages SET payload = jsonb_set(payload, '{flag}', '"fixed"')
 WHERE queue IN ('rp_typesq', 'rp_arraysq');
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_typesq') r;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('rp_arraysq') r;
SELECT * FROM rp_types ORDER BY id;
SELECT * FROM rp_arrays ORDER BY id;

-- Captured UPDATEs are not replayed (the old key is unknown): reported.
CREATE TABLE rp_up (id int PRIMARY KEY, v int CHECK (v > 0));
INSERT INTO rp_up VALUES (1, 1);
SELECT dlq_attach('rp_up', 'rp_upq');
UPDATE rp_up SET v = -1;
SELECT r->'failed' AS failed, r->'failures'->0->>'sqlstate' AS sqlstate, r->'failures'->0->>'error' AS error
  FROM dlq_reprocess_all('rp_upq') r;

-- Replay inserts as the table's owner with search_path pinned to
-- pg_catalog, pg_temp (DESIGN 7.1): neither the caller's privileges nor its
-- search_path reach the table's triggers.  A trigger that names its tables
-- and functions unqualified fails its row's replay (1.1: that row's
-- failure, recorded, instead of aborting the call) until it sets its own
-- search_path; it then sees the table's owner as current_user.
CREATE TABLE rp_log (who name, note text);
CREATE FUNCTION rp_note(v int) RETURNS text LANGUAGE sql AS $$ SELECT 'v=' || v $$;
CREATE FUNCTION rp_log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rp_log VALUES (current_user, rp_note(NEW.v));
    RETURN NEW;
END $$;
CREATE TABLE rp_trg (id int PRIMARY KEY, v int CHECK (v > 0));
CREATE TRIGGER a_log BEFORE INSERT ON rp_trg FOR EACH ROW EXECUTE FUNCTION rp_log_row();
SELECT dlq_attach('rp_trg', 'rp_trgq');
INSERT INTO rp_trg VALUES (1, -1);
UPDATE dlq.messages SET payload = jsonb_set(payload, '{v}', '5') WHERE queue = 'rp_trgq';
DELETE FROM rp_log;
SELECT r->'replayed' AS replayed, r->'failed' AS failed,
       r->'failures'->0->>'sqlstate' AS sqlstate, r->'failures'->0->>'error' AS error
  FROM dlq_reprocess_all('rp_trgq') r;
SELECT status, attempts, sqlstate, error_class, error_detail->>'detail' AS detail
  FROM dlq.messages WHERE queue = 'rp_trgq';
SELECT * FROM rp_trg;
ALTER FUNCTION rp_log_row() SET search_path = public;
SELECT r->'replayed' AS replayed, r->'failed' AS failed, r->'failures' AS failures
  FROM dlq_reprocess_all('rp_trgq') r;
SELECT * FROM rp_trg;
SELECT who = (SELECT relowner::regrole::name FROM pg_class WHERE oid = 'rp_trg'::regclass) AS as_owner,
       note FROM rp_log;
