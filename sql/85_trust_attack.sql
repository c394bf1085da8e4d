-- Hostile review of the 1.1 trust model (DESIGN 7.1), after the issue 11
-- fixes.  Each block is one attack by a role holding only dlq_writer,
-- dlq_reader, dlq_operator or nothing (plus CREATE on public), and pins
-- what happens TODAY.  Blocks marked FINDING pin behaviour that breaks
-- 7.1: when it is fixed, their expected output changes on purpose.
-- Blocks marked HELD pin an attack that is refused.
\set VERBOSITY terse
SET client_min_messages = warning;

CREATE ROLE sec_atk_w LOGIN IN ROLE dlq_writer;
CREATE ROLE sec_atk_r LOGIN IN ROLE dlq_reader;
CREATE ROLE sec_atk_op LOGIN IN ROLE dlq_operator;
CREATE ROLE sec_atk_nobody LOGIN;
GRANT CREATE ON SCHEMA public TO sec_atk_w, sec_atk_r, sec_atk_op, sec_atk_nobody;

-- A victim queue with a payload the writer must never read, nor change.
SELECT dlq_store('atk_payments', '{"card": "4111-SECRET"}', 'declined') > 0 AS stored;

-- FINDING A (fixed; sql/86_trust_replay_owner): a writer's own table, bound
-- to its own queue, ran the writer's trigger as whoever replayed it, so a
-- routine dlq_reprocess_all by an operator let the writer read every
-- queue's payloads and discard another queue.  The trigger now runs as the
-- table's owner: no loot, the queue is intact.
SET ROLE sec_atk_w;
SELECT dlq_test.try('SELECT count(*) FROM dlq.messages') AS writer_reads_messages;
CREATE TABLE atk_w_t (id int PRIMARY KEY, v text);
CREATE TABLE atk_w_loot (j jsonb);
GRANT INSERT ON atk_w_t, atk_w_loot TO PUBLIC;
CREATE FUNCTION atk_w_trojan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO public.atk_w_loot
        SELECT m.payload FROM dlq.messages m WHERE m.queue = 'atk_payments';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        PERFORM public.dlq_discard_all('atk_payments');
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa BEFORE INSERT ON atk_w_t FOR EACH ROW EXECUTE FUNCTION atk_w_trojan();
SELECT dlq_attach('atk_w_t');
INSERT INTO atk_w_t VALUES (1, 'a');
INSERT INTO atk_w_t VALUES (1, 'dup');
DELETE FROM atk_w_t;
SELECT count(*) AS loot_before_replay FROM atk_w_loot;
RESET ROLE;
SET ROLE sec_atk_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed
  FROM dlq_reprocess_all('atk_w_t') r;
RESET ROLE;
SET ROLE sec_atk_w;
SELECT j AS loot_after_replay FROM atk_w_loot;
RESET ROLE;
SELECT count(*) AS payments_left FROM dlq.messages WHERE queue = 'atk_payments';
SELECT actor, kind, message_count FROM dlq.events WHERE queue = 'atk_payments' ORDER BY event_id;

-- FINDING B (fixed; sql/86_trust_replay_owner): a row the replayed row's
-- own trigger writes into another captured table, and that violates it,
-- vanished: neither inserted nor stored.  It is now a message of that table.
SET ROLE sec_atk_w;
CREATE TABLE atk_fan_u (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE atk_fan_s (id int PRIMARY KEY, v int);
GRANT INSERT ON atk_fan_u, atk_fan_s TO PUBLIC;
SELECT dlq_attach('atk_fan_u');
SELECT dlq_attach('atk_fan_s');
CREATE FUNCTION atk_fanout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.atk_fan_u VALUES (NEW.id, NEW.v); RETURN NEW; END $$;
CREATE TRIGGER fan AFTER INSERT ON atk_fan_s FOR EACH ROW EXECUTE FUNCTION atk_fanout();
-- Outside a replay the fanned-out bad row is captured: one message in atk_fan_u.
INSERT INTO atk_fan_s VALUES (1, NULL);
-- A duplicate of id 2 is captured in atk_fan_s (the fan-out never ran for it).
INSERT INTO atk_fan_s VALUES (2, 1), (2, NULL);
DELETE FROM atk_fan_s WHERE id = 2;
DELETE FROM atk_fan_u WHERE id = 2;
RESET ROLE;
SELECT queue, payload, status FROM dlq.messages WHERE queue IN ('atk_fan_s', 'atk_fan_u') ORDER BY message_id;
SET ROLE sec_atk_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed
  FROM dlq_reprocess_all('atk_fan_s') r;
RESET ROLE;
-- The replayed row (2, NULL) is in atk_fan_s; its fan-out (2, NULL) is a
-- pending message of atk_fan_u.
SELECT * FROM atk_fan_s ORDER BY id;
SELECT * FROM atk_fan_u ORDER BY id;
SELECT queue, payload, status FROM dlq.messages WHERE queue IN ('atk_fan_s', 'atk_fan_u') ORDER BY message_id;

-- FINDING C: a diverted row is lost when a later capture flush runs inside
-- a subtransaction that rolls back (here an exception block in another
-- BEFORE trigger writing to a second attached table): the flush stored the
-- outer row inside the subtransaction and took it out of the buffer.
SET ROLE sec_atk_w;
CREATE TABLE atk_loss_a (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE atk_loss_b (id int PRIMARY KEY);
SELECT dlq_attach('atk_loss_a');
SELECT dlq_attach('atk_loss_b');
CREATE FUNCTION atk_loss_side() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO public.atk_loss_b VALUES (NEW.id);
        RAISE EXCEPTION 'side effect undone';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa BEFORE INSERT ON atk_loss_a FOR EACH ROW EXECUTE FUNCTION atk_loss_side();
INSERT INTO atk_loss_a VALUES (1, NULL), (2, 2);
SELECT * FROM atk_loss_a ORDER BY id;
RESET ROLE;
-- (1, NULL) was diverted and is kept (fixed: the flush in the block leaves it).
SELECT count(*) AS messages FROM dlq.messages WHERE queue = 'atk_loss_a';
SELECT kind FROM dlq.events WHERE queue = 'atk_loss_a' ORDER BY event_id;

-- FIXED D: etl_status read each stage source's max key as the caller, so a
-- row-level security policy of the source's owner ran as every reader or
-- operator that looked at the dashboard.  It now reads as the source's
-- owner in a security-restricted operation, after checking the caller.
SET ROLE sec_atk_w;
CREATE TABLE atk_stage_log (who text);
GRANT INSERT ON atk_stage_log TO PUBLIC;
CREATE FUNCTION atk_stage_spy() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        INSERT INTO public.atk_stage_log
        SELECT current_user || ' saw ' || count(*) || ' payloads' FROM dlq.messages;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN true;
END $$;
CREATE TABLE atk_stage_src (id bigint PRIMARY KEY);
INSERT INTO atk_stage_src VALUES (5);
ALTER TABLE atk_stage_src ENABLE ROW LEVEL SECURITY;
CREATE POLICY spy ON atk_stage_src FOR SELECT USING (public.atk_stage_spy());
GRANT SELECT ON atk_stage_src TO PUBLIC;
RESET ROLE;
SET ROLE sec_atk_op;
SELECT etl_register_stage('atk_stage', 'atk_stage_src', 'id');
RESET ROLE;
SET ROLE sec_atk_r;
SELECT name, source_max FROM etl_status('atk_stage');
RESET ROLE;
SELECT DISTINCT regexp_replace(who, '[0-9]+', 'N') AS ran_as FROM atk_stage_log ORDER BY 1;

-- FIXED E: dropping a bound table left its OID in replay_target.  After OID
-- wraparound, or a dump restored into another cluster (regclass of a
-- dropped table dumps as a number), whoever created a table with that OID
-- received these rows on replay (reproduced by hand with pg_resetwal -o).
-- Now the sql_drop event trigger dlq_unbind_dropped_tables unbinds it.
SET ROLE sec_atk_w;
CREATE TABLE atk_gone (id int PRIMARY KEY);
SELECT dlq_attach('atk_gone');
INSERT INTO atk_gone VALUES (1), (1);
DROP TABLE atk_gone;
RESET ROLE;
SELECT replay_target IS NOT NULL AS still_bound,
       to_regclass(replay_target::text) IS NULL AS to_nothing
  FROM dlq.queues WHERE queue = 'atk_gone';
SELECT count(*) AS orphans_pointing_there FROM dlq.messages m JOIN dlq.queues q USING (queue)
 WHERE m.queue = 'atk_gone' AND m.source_relation = q.replay_target;

-- FINDING F: DROP ROLE of a queue's created_by / retry_role succeeds and
-- leaves a bare OID; a dump taken before it cannot be restored without the
-- role (COPY of dlq.queues fails: every queue's settings are lost).
CREATE ROLE sec_atk_tmp_op IN ROLE dlq_operator;
SET ROLE sec_atk_tmp_op;
SELECT (dlq_configure('atk_tmp', auto_retry => true)).retry_role;
RESET ROLE;
DROP ROLE sec_atk_tmp_op;
SELECT retry_role::oid NOT IN (SELECT oid FROM pg_roles) AS retry_role_dangles,
       created_by::oid NOT IN (SELECT oid FROM pg_roles) AS created_by_dangles
  FROM dlq.queues WHERE queue = 'atk_tmp';

-- FINDING G (low): a writer squats any queue name; the table's owner then
-- cannot attach with the default queue.
SET ROLE sec_atk_w;
SELECT dlq_store('atk_orders', '{}', 'squatted') > 0 AS squatted;
RESET ROLE;
SET ROLE sec_atk_op;
CREATE TABLE atk_orders (id int PRIMARY KEY);
SELECT dlq_test.try($$SELECT dlq_attach('atk_orders')$$);
RESET ROLE;

-- HELD: a writer's hand-made capture trigger aimed at a bound queue: its
-- rows are refused on replay (42501, to review), never inserted.
SET ROLE sec_atk_op;
CREATE TABLE atk_vt (id int PRIMARY KEY, amount int);
GRANT INSERT ON atk_vt TO sec_atk_op;
SELECT dlq_attach('atk_vt');
RESET ROLE;
SET ROLE sec_atk_w;
CREATE TABLE atk_forge (id int PRIMARY KEY, amount int);
CREATE TRIGGER c BEFORE INSERT ON atk_forge FOR EACH ROW EXECUTE FUNCTION dlq_capture('atk_vt');
INSERT INTO atk_forge VALUES (99, 1000000), (99, 1000000);
SELECT dlq_store('atk_vt', '{"id": 98, "amount": 1000000}', 'forged') > 0 AS stored;
RESET ROLE;
SET ROLE sec_atk_op;
SELECT r->'replayed' AS replayed, r->'failed' AS failed,
       (SELECT array_agg(DISTINCT f->>'sqlstate') FROM jsonb_array_elements(r->'failures') f) AS why
  FROM dlq_reprocess_all('atk_vt') r;
SELECT count(*) AS forged_rows_in_target FROM atk_vt;
RESET ROLE;

-- HELD: binding catalogs, dlq's tables or someone else's table.
SET ROLE sec_atk_w;
SELECT dlq_test.try($$SELECT dlq_attach('pg_catalog.pg_authid')$$);
SELECT dlq_test.try($$SELECT dlq_attach('dlq.queues')$$);
SELECT dlq_test.try($$SELECT dlq_attach('atk_vt', 'atk_mine')$$);
CREATE TABLE atk_w_t2 (id int PRIMARY KEY);
SELECT dlq_test.try($$SELECT dlq_attach('atk_w_t2', 'atk_payments')$$);
RESET ROLE;
SET ROLE sec_atk_op;
SELECT dlq_test.try($$SELECT dlq_configure('atk_payments', replay_target => 'pg_authid')$$);
SELECT dlq_test.try($$SELECT dlq_configure('atk_payments', replay_target => 'atk_w_t')$$);
RESET ROLE;

-- HELD: no role without dlq_operator can fake or block a consumer with the
-- SQL advisory lock functions (the registry uses a tag they cannot make).
SELECT dlq_store('atk_c', '{}', 'e') > 0 AS stored;
SET ROLE sec_atk_nobody;
SELECT pg_advisory_lock(x'00444C51'::int, hashtext('atk_c'));
SELECT pg_advisory_lock(x'00444C51'::bigint << 32 | 1);
RESET ROLE;
SET ROLE sec_atk_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('atk_c')$$);
SELECT dlq_listen('atk_c');
UNLISTEN *;
RESET ROLE;
SET ROLE sec_atk_nobody;
SELECT pg_advisory_unlock_all();
RESET ROLE;

-- HELD: limits, names and arrays.
SET ROLE sec_atk_w;
SELECT dlq_test.try($$SELECT dlq_store('atk_big', jsonb_build_object('a', repeat('x', 2000000)), 'e')$$);
SELECT dlq_test.try($$SELECT dlq_store('atk_big', '{}', 'e', metadata => jsonb_build_object('a', repeat('x', 2000000)))$$);
SELECT dlq_test.try($$SELECT dlq_store('atk_big', '{}', 'e', error_detail => jsonb_build_object('a', repeat('x', 2000000)))$$);
SELECT dlq_test.try($$SELECT dlq_store('atk_big', '{}', 'e', dedup_key => repeat('k', 3000))$$);
SELECT dlq_test.try($$SELECT dlq_store(E'atk\u0085', '{}', 'e')$$);
SELECT dlq_test.try($$SELECT dlq_store('atk_big', '{}', 'e', component => E'c\u009f')$$);
SELECT dlq_test.try($$SET dlq.max_payload_bytes = '1GB'$$);
RESET ROLE;
SET ROLE sec_atk_op;
SELECT dlq_test.try($$SET dlq.max_ids_per_call = 100000000$$);
SELECT dlq_test.try($$SELECT dlq_discard('{{1,2},{3,4}}'::bigint[])$$);
SELECT dlq_test.try($$SELECT dlq_discard(ARRAY[1, NULL]::bigint[])$$);
SELECT dlq_test.try($$SELECT dlq_reprocess_all('atk_payments', max_messages => -1)$$);
SELECT dlq_test.try($$SELECT count(*) FROM dlq_list('atk_payments', batch_size => 2147483647)$$);
SELECT dlq_test.try($$SELECT count(*) FROM dlq_claim('atk_payments', 1, '-1 day')$$);
SELECT dlq_test.try($$SELECT dlq_nack(1, 'x', retry_in => '-100 years')$$);
SELECT dlq_test.try($$SELECT dlq_configure('atk_payments', retention => '100000000 years')$$);
SELECT dlq_test.try($$SELECT dlq_configure('atk_payments', retry_factor => 'Infinity')$$);
SELECT dlq_test.try($$SELECT dlq_configure('atk_payments', channel => 'dlq_alerts')$$);
RESET ROLE;

-- HELD: a reader may read every queue's payloads (DESIGN 1: dlq_reader may
-- list and get), but may change nothing.
SET ROLE sec_atk_r;
SELECT dlq_test.try($$SELECT dlq_discard_all('atk_big')$$);
SELECT dlq_test.try($$UPDATE dlq.queues SET paused = true$$);
SELECT dlq_test.try($$SELECT dlq.recount()$$);
RESET ROLE;

-- Clean up what other files might trip over.
SET ROLE sec_atk_w;
SELECT dlq_detach('atk_w_t');
SELECT dlq_detach('atk_fan_s');
SELECT dlq_detach('atk_fan_u');
SELECT dlq_detach('atk_loss_a');
SELECT dlq_detach('atk_loss_b');
RESET ROLE;
DELETE FROM dlq.stages WHERE stage = 'atk_stage';
DROP POLICY spy ON atk_stage_src;
