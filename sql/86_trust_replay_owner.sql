-- Replay into a table runs as the table's owner, in a security-restricted
-- operation with search_path pinned to pg_catalog, pg_temp, authorised by
-- the caller's INSERT privilege (DESIGN 7.1; findings 1 and 4 of the
-- hostile review of 1.1, sql/85_trust_attack.sql blocks A and B).  The
-- worker's side (retries as the queue's retry_role) is in
-- tests/t/080_trust_worker.pl.
\set VERBOSITY terse
SET client_min_messages = warning;

CREATE ROLE sec_own_w LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_own_op LOGIN IN ROLE dlq_operator;
GRANT CREATE ON SCHEMA public TO sec_own_w, sec_own_op;
-- A queue whose payload the writer must never read, nor discard.
SELECT dlq_store('sec_own_secret', '{"card": "4111-SECRET"}', 'declined') > 0 AS stored;

-- 1. A writer's table, bound to its own queue, with a trigger that tries
-- what only the replaying role could do: read dlq.messages, discard another
-- queue, make its owner a superuser, reset the session's role.  It logs
-- who it ran as, with which search_path, and what worked.
SET ROLE sec_own_w;
CREATE TABLE sec_own_t (id int PRIMARY KEY, v text);
CREATE TABLE sec_own_log (who name, search_path text, loot jsonb, discarded boolean,
    made_superuser boolean, set_role text);
GRANT INSERT ON sec_own_t, sec_own_log TO PUBLIC;
SELECT dlq_attach('sec_own_t');
-- Two duplicates are captured (before the trigger exists: in the writer's
-- own session it could reset the role of this test's session).
INSERT INTO sec_own_t VALUES (1, 'a'), (2, 'a');
INSERT INTO sec_own_t VALUES (1, 'dup');
INSERT INTO sec_own_t VALUES (2, 'dup');
DELETE FROM sec_own_t;
CREATE FUNCTION sec_own_trojan() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    loot jsonb;
    discarded boolean := false;
    made_superuser boolean := false;
    set_role text := 'ok';
BEGIN
    BEGIN
        SELECT m.payload INTO loot FROM dlq.messages m WHERE m.queue = 'sec_own_secret' LIMIT 1;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        PERFORM public.dlq_discard_all('sec_own_secret');
        discarded := true;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        EXECUTE 'ALTER ROLE sec_own_w SUPERUSER';
        made_superuser := true;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        PERFORM pg_catalog.set_config('role', 'none', false);
    EXCEPTION WHEN insufficient_privilege THEN set_role := SQLERRM;
    END;
    INSERT INTO public.sec_own_log
        VALUES (current_user, current_setting('search_path'), loot, discarded, made_superuser, set_role);
    RETURN NEW;
END $$;
CREATE TRIGGER aaa BEFORE INSERT ON sec_own_t FOR EACH ROW EXECUTE FUNCTION sec_own_trojan();
RESET ROLE;
SELECT payload->>'id' AS id, status FROM dlq.messages WHERE queue = 'sec_own_t' ORDER BY message_id;
-- An operator replays message 1, with a search_path of its own.
SET ROLE sec_own_op;
SET search_path = public, pg_catalog;
SELECT r->'replayed' AS replayed, r->'failed' AS failed
  FROM dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages
                           WHERE queue = 'sec_own_t' AND payload->>'id' = '1')) r;
RESET search_path;
RESET ROLE;
SELECT who, search_path, loot, discarded, made_superuser, set_role FROM sec_own_log;
SELECT count(*) AS secret_left FROM dlq.messages WHERE queue = 'sec_own_secret' AND status = 'pending';
SELECT actor, kind, message_count FROM dlq.events WHERE queue = 'sec_own_secret' ORDER BY event_id;
-- A superuser replays message 2: the owner's trigger still runs as the owner.
-- (The secret is stored again if the trigger discarded it.)
SELECT count(dlq_store('sec_own_secret', '{"card": "4111-SECRET"}', 'declined')) AS stored_again
  FROM (SELECT 1 WHERE NOT EXISTS (SELECT FROM dlq.messages
                                   WHERE queue = 'sec_own_secret' AND status = 'pending')) s;
DELETE FROM sec_own_log;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('sec_own_t') r;
SELECT who, search_path, loot, discarded, made_superuser, set_role FROM sec_own_log;
SELECT rolsuper FROM pg_roles WHERE rolname = 'sec_own_w';
ALTER ROLE sec_own_w NOSUPERUSER;
SELECT count(*) AS secret_left FROM dlq.messages WHERE queue = 'sec_own_secret' AND status = 'pending';
SELECT id, v FROM sec_own_t ORDER BY id;
SELECT payload->>'id' AS id, status FROM dlq.messages WHERE queue = 'sec_own_t' ORDER BY message_id;
-- The audit trail still names the role that replayed.
SELECT actor, kind, message_count FROM dlq.events
 WHERE queue = 'sec_own_t' AND kind IN ('replayed', 'replay_failed') ORDER BY event_id;

-- 2. The caller must hold INSERT on the table (42501, checked up front) ...
SET ROLE sec_own_w;
CREATE TABLE sec_own_priv (id int PRIMARY KEY, note text);
SELECT dlq_attach('sec_own_priv');
INSERT INTO sec_own_priv VALUES (1, 'a');
INSERT INTO sec_own_priv VALUES (1, 'dup');
DELETE FROM sec_own_priv;
RESET ROLE;
SET ROLE sec_own_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('sec_own_priv')$$) AS no_insert;
RESET ROLE;
-- ... on every column: INSERT on only some of them is not enough.
SET ROLE sec_own_w;
GRANT INSERT (id) ON sec_own_priv TO sec_own_op;
RESET ROLE;
SET ROLE sec_own_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('sec_own_priv')$$) AS some_columns;
RESET ROLE;
SET ROLE sec_own_w;
GRANT INSERT (id, note) ON sec_own_priv TO sec_own_op;
RESET ROLE;
SET ROLE sec_own_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('sec_own_priv')$$) AS every_column_one_by_one;
RESET ROLE;
SET ROLE sec_own_w;
GRANT INSERT ON sec_own_priv TO sec_own_op;
RESET ROLE;
SET ROLE sec_own_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('sec_own_priv') r;
RESET ROLE;
SELECT id, note FROM sec_own_priv;

-- 3. Row-level security: a caller the table's policies bind is refused
-- (42501) rather than have the owner bypass them; a caller they do not bind
-- (here a superuser) replays.
SET ROLE sec_own_w;
CREATE TABLE sec_own_rls (id int PRIMARY KEY, amount int);
ALTER TABLE sec_own_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY small ON sec_own_rls FOR INSERT WITH CHECK (amount < 100);
CREATE POLICY readable ON sec_own_rls FOR SELECT USING (true);
GRANT SELECT, INSERT ON sec_own_rls TO sec_own_op;
SELECT dlq_attach('sec_own_rls');
-- The owner is not bound by its policies: its duplicate is captured.
INSERT INTO sec_own_rls VALUES (1, 500);
INSERT INTO sec_own_rls VALUES (1, 500);
DELETE FROM sec_own_rls;
RESET ROLE;
SET ROLE sec_own_op;
SELECT dlq_test.try($$INSERT INTO sec_own_rls VALUES (1, 500)$$) AS own_insert;
SELECT dlq_test.err($$SELECT dlq_reprocess_all('sec_own_rls')$$) AS replay;
RESET ROLE;
SELECT count(*) AS rls_rows FROM sec_own_rls;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('sec_own_rls') r;
SELECT id, amount FROM sec_own_rls;

-- 4. Only the replayed row is treated as the replay.  A violating row that
-- the replayed row's triggers (or a rule) write into another captured
-- table, or into the same table, is diverted into that table's queue as
-- usual, never dropped.
SET ROLE sec_own_w;
CREATE TABLE sec_own_fan_u (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE sec_own_fan_r (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE sec_own_fan_s (id int PRIMARY KEY, v int CHECK (v <> 0));
GRANT INSERT ON sec_own_fan_u, sec_own_fan_r, sec_own_fan_s TO PUBLIC;
SELECT dlq_attach('sec_own_fan_u');
SELECT dlq_attach('sec_own_fan_r');
SELECT dlq_attach('sec_own_fan_s');
CREATE FUNCTION sec_own_fanout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.sec_own_fan_u VALUES (NEW.id, NEW.v);
    IF NEW.id < 100 THEN
        INSERT INTO public.sec_own_fan_s VALUES (NEW.id + 100, 0);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fan AFTER INSERT ON sec_own_fan_s FOR EACH ROW EXECUTE FUNCTION sec_own_fanout();
CREATE RULE fan_rule AS ON INSERT TO sec_own_fan_s
    DO ALSO INSERT INTO public.sec_own_fan_r VALUES (NEW.id, NEW.v);
-- A duplicate of id 2 is captured in sec_own_fan_s (its fan-out never ran;
-- the rule's copy and the first row's fan-outs are deleted below).
INSERT INTO sec_own_fan_s VALUES (2, 1);
INSERT INTO sec_own_fan_s VALUES (2, NULL);
DELETE FROM sec_own_fan_s;
DELETE FROM sec_own_fan_u;
DELETE FROM sec_own_fan_r;
RESET ROLE;
DELETE FROM dlq.messages WHERE queue IN ('sec_own_fan_u', 'sec_own_fan_r')
   OR (queue = 'sec_own_fan_s' AND payload->>'id' <> '2');
SELECT queue, payload, status FROM dlq.messages
 WHERE queue LIKE 'sec_own_fan%' ORDER BY message_id;
SET ROLE sec_own_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed
  FROM dlq_reprocess_all('sec_own_fan_s') r;
RESET ROLE;
-- (2, NULL) is in sec_own_fan_s; its trigger's copy (2, NULL) for
-- sec_own_fan_u, the rule's copy for sec_own_fan_r and the trigger's
-- (102, 0) for sec_own_fan_s itself are each a new message of their table
-- (the rule copied (102, 0), valid there, into sec_own_fan_r).
SELECT * FROM sec_own_fan_s ORDER BY id;
SELECT * FROM sec_own_fan_u ORDER BY id;
SELECT * FROM sec_own_fan_r ORDER BY id;
SELECT queue, payload, status, sqlstate FROM dlq.messages
 WHERE queue LIKE 'sec_own_fan%' ORDER BY message_id;

-- A partitioned target: the partition's trigger still hands the replayed
-- row's violation back to the replay, which reports it (no new message).
SET ROLE sec_own_w;
CREATE TABLE sec_own_part (id int, region text, amount int CHECK (amount >= 0),
    PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE sec_own_part_eu PARTITION OF sec_own_part FOR VALUES IN ('eu');
GRANT INSERT ON sec_own_part TO sec_own_op;
SELECT dlq_attach('sec_own_part');
INSERT INTO sec_own_part VALUES (1, 'eu', 1), (1, 'eu', 2), (2, 'eu', -1);
RESET ROLE;
SET ROLE sec_own_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('sec_own_part') r;
RESET ROLE;
SELECT * FROM sec_own_part ORDER BY id;
SELECT payload->>'id' AS id, status, attempts, sqlstate FROM dlq.messages
 WHERE queue = 'sec_own_part' ORDER BY message_id;
