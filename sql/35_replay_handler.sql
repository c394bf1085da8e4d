-- Replay through a queue's replay_handler (DESIGN 7.3): the handler is
-- called once per message, authorised by the caller's EXECUTE and run as
-- the function's owner (who bound it) in a security-restricted operation
-- with the owner's search_path, like a replay target's triggers; returning resolves
-- the message, an error is that message's failure (recorded, attempts + 1,
-- pending or review), and what a failing call wrote is undone.  Binding a
-- handler is tested in 87_trust_handler_binding.
\set VERBOSITY default
SET client_min_messages = warning;

CREATE ROLE hr_op LOGIN IN ROLE dlq_operator;
CREATE ROLE hr_other LOGIN IN ROLE dlq_operator;
GRANT CREATE ON SCHEMA public TO hr_op;
SET ROLE hr_op;
CREATE TABLE hr_out (n int, who name, note text);
-- A handler of the payload: writes a row, then fails for some payloads.
CREATE FUNCTION hr_handle(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hr_out VALUES ((p->>'n')::int, current_user, 'payload');
    IF p ? 'bad' THEN
        RAISE EXCEPTION 'order % rejected', p->>'n' USING ERRCODE = 'HR001', DETAIL = 'bad order',
            HINT = 'fix the order';
    END IF;
    IF p ? 'zero' THEN
        PERFORM 1 / 0;
    END IF;
END $$;
-- A handler of the whole message (dlq.message, as dlq_get returns it).
CREATE FUNCTION hr_handle_message(m dlq.message) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hr_out VALUES ((m.payload->>'n')::int, current_user,
        format('%s attempts=%s status=%s', m.queue, m.attempts, m.status));
    RETURN 'ignored';
END $$;
RESET ROLE;

SELECT replay_handler FROM dlq_configure('hr_q', replay_handler => 'hr_handle(jsonb)', max_attempts => 2);
SELECT dlq_store('hr_q', jsonb_build_object('n', g), 'failed ' || g) IS NOT NULL AS stored
  FROM generate_series(1, 6) g;
UPDATE dlq.messages SET payload = payload || '{"bad": true}' WHERE queue = 'hr_q' AND payload->>'n' = '2';
UPDATE dlq.messages SET payload = payload || '{"zero": true}' WHERE queue = 'hr_q' AND payload->>'n' = '5';
GRANT INSERT ON hr_out TO hr_other;

-- A dry run calls nothing and counts the messages as replayed.
SELECT r - 'request_id' AS summary FROM dlq_reprocess_all('hr_q', dry_run => true) r;
SELECT count(*) AS handler_calls FROM hr_out;

-- The replay: no consumer needed; 4 resolved, 2 failed with their errors.
SET ROLE hr_op;
SELECT r - 'request_id' - 'failures' AS summary,
       (SELECT jsonb_agg(f - 'message_id' ORDER BY (f->>'message_id')::bigint)
          FROM jsonb_array_elements(r->'failures') f) AS failures
  FROM dlq_reprocess_all('hr_q') r;
RESET ROLE;
-- The handler ran as its owner, not as the superuser who replayed; only the
-- successful calls' rows are kept.
SELECT n, who, note FROM hr_out ORDER BY n;
SELECT payload->>'n' AS n, status, attempts, sqlstate, error_class, error,
       error_detail->>'detail' AS detail, error_detail->>'hint' AS hint,
       error_detail->>'handler' AS handler
  FROM dlq.messages WHERE queue = 'hr_q' ORDER BY message_id;
SELECT error_detail->>'context' AS context FROM dlq.messages
 WHERE queue = 'hr_q' AND payload->>'n' = '5';
SELECT kind, actor, message_count,
       (SELECT jsonb_agg(a->>'sqlstate' ORDER BY a->>'message_id') FROM jsonb_array_elements(detail->'attempts') a) AS sqlstates
  FROM dlq.events WHERE queue = 'hr_q' AND kind IN ('replayed', 'replay_failed') ORDER BY event_id;
SELECT last_replay_at IS NOT NULL AS stamped FROM dlq.queues WHERE queue = 'hr_q';

-- The queue's own error classes decide error_class: HR001 transient here.
SELECT (dlq_configure('hr_q', transient_sqlstates => ARRAY['HR001'])).queue;
-- Failing again: max_attempts 2 reached, to review.
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_q') r;
SELECT payload->>'n' AS n, status, attempts, sqlstate, error_class
  FROM dlq.messages WHERE queue = 'hr_q' AND status <> 'resolved' ORDER BY message_id;

-- Fixed payloads, forced from review, through the dlq.message handler: it
-- sees the message as it stands before this attempt.
UPDATE dlq.messages SET payload = payload - 'bad' - 'zero' WHERE queue = 'hr_q';
SELECT replay_handler FROM dlq_configure('hr_q', replay_handler => 'hr_handle_message(dlq.message)');
DELETE FROM hr_out;
SELECT r->'replayed' AS replayed, r->'failed' AS failed
  FROM dlq_reprocess_all('hr_q', force => true) r;
SELECT kind, message_count FROM dlq.events
 WHERE queue = 'hr_q' AND kind IN ('redriven', 'replayed') ORDER BY event_id DESC LIMIT 2;
SELECT n, who, note FROM hr_out ORDER BY n;
SELECT status, count(*) FROM dlq.messages WHERE queue = 'hr_q' GROUP BY status;

-- A caller without EXECUTE on the handler: 42501 for the whole call,
-- nothing changed.  Granted, the handler still runs as its owner.
SELECT replay_handler FROM dlq_configure('hr_q', replay_handler => 'hr_handle(jsonb)');
SELECT dlq_store('hr_q', jsonb_build_object('n', g), 'e') IS NOT NULL AS stored FROM generate_series(7, 8) g;
REVOKE EXECUTE ON FUNCTION hr_handle(jsonb) FROM PUBLIC;
DELETE FROM hr_out;
SET ROLE hr_other;
SELECT dlq_test.err($$SELECT dlq_reprocess_all('hr_q')$$);
SELECT dlq_test.try(format('SELECT dlq_reprocess(ARRAY[%s])',
    (SELECT min(message_id) FROM dlq.messages WHERE queue = 'hr_q' AND status = 'pending')));
RESET ROLE;
SELECT status, attempts FROM dlq.messages WHERE queue = 'hr_q' AND status <> 'resolved' ORDER BY message_id;
GRANT EXECUTE ON FUNCTION hr_handle(jsonb) TO hr_other;
SET ROLE hr_other;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_q') r;
RESET ROLE;
SELECT n, who FROM hr_out ORDER BY n;

-- A hostile handler fails only its own message: it runs as its owner (no
-- rights on dlq's tables) in a security-restricted operation (no SET ROLE),
-- and may not replay, nor change the message it is given, nor commit.
SET ROLE hr_op;
CREATE FUNCTION hr_hostile(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE p->>'attack'
    WHEN 'update' THEN
        UPDATE dlq.messages SET status = 'resolved' WHERE queue = 'hr_hq';
    WHEN 'role' THEN
        PERFORM set_config('role', 'postgres', false);
    WHEN 'replay' THEN
        PERFORM dlq_reprocess_all('hr_hq');
    WHEN 'discard' THEN
        PERFORM dlq_discard(ARRAY[(SELECT m.message_id FROM dlq_list('hr_hq') m
                                    WHERE m.payload->>'attack' = 'discard')]);
    WHEN 'commit' THEN
        COMMIT;
    WHEN 'path' THEN
        -- sees its owner's search_path, not the caller's; its own choice
        -- ends with the call
        INSERT INTO public.hr_out VALUES ((p->>'n')::int, current_user, current_setting('search_path'));
        PERFORM set_config('search_path', 'hr_evil, pg_catalog', false);
    ELSE
        INSERT INTO public.hr_out VALUES ((p->>'n')::int, current_user, 'fine');
    END CASE;
END $$;
RESET ROLE;
SELECT replay_handler FROM dlq_configure('hr_hq', replay_handler => 'hr_hostile(jsonb)');
SELECT dlq_store('hr_hq', p, 'e') IS NOT NULL AS stored FROM unnest(ARRAY[
    '{"n": 1}', '{"n": 2, "attack": "update"}', '{"n": 3, "attack": "role"}',
    '{"n": 4, "attack": "replay"}', '{"n": 5, "attack": "discard"}',
    '{"n": 6, "attack": "commit"}', '{"n": 7}', '{"n": 8, "attack": "path"}',
    '{"n": 9}']::jsonb[]) p;
DELETE FROM hr_out;
SET ROLE hr_op;
SET search_path = public, pg_catalog;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_hq') r;
SELECT current_setting('search_path') AS search_path_after;
RESET search_path;
RESET ROLE;
SELECT payload->>'attack' AS attack, status, sqlstate,
       regexp_replace(error, 'message \d+', 'message N') AS error
  FROM dlq.messages WHERE queue = 'hr_hq' ORDER BY message_id;
SELECT n, who, note FROM hr_out ORDER BY n;
SELECT current_user;

-- The trojan a handler run as the caller would be: its owner's code run by a
-- superuser's replay.  It runs as the owner instead, who cannot make itself
-- superuser; only that message fails.
SET ROLE hr_op;
CREATE FUNCTION hr_trojan(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE hr_op SUPERUSER';
END $$;
RESET ROLE;
SELECT replay_handler FROM dlq_configure('hr_tq', replay_handler => 'hr_trojan(jsonb)');
SELECT dlq_store('hr_tq', '{"n": 1}', 'e') IS NOT NULL AS stored;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_tq') r;
SELECT status, sqlstate, error FROM dlq.messages WHERE queue = 'hr_tq';
SELECT rolsuper FROM pg_roles WHERE rolname = 'hr_op';
-- A handler whose owner changed since it was bound (ALTER FUNCTION ...
-- OWNER TO, REASSIGN OWNED) does not run as its new owner: 42501 for the
-- whole call, nothing changed, until the new owner binds it again.
ALTER FUNCTION hr_trojan(jsonb) OWNER TO hr_other;
SELECT dlq_test.err($$SELECT dlq_reprocess_all('hr_tq')$$);
SELECT status, attempts FROM dlq.messages WHERE queue = 'hr_tq';
SET ROLE hr_other;
SELECT replay_handler, replay_handler_owner FROM dlq_configure('hr_tq', replay_handler => 'hr_trojan(jsonb)');
RESET ROLE;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_tq') r;
SELECT status, attempts, sqlstate FROM dlq.messages WHERE queue = 'hr_tq';

-- A SQL function works the same way (its cached plan survives the calls
-- rolled back).
SET ROLE hr_op;
CREATE FUNCTION hr_sql(p jsonb) RETURNS int LANGUAGE sql AS $$
    INSERT INTO public.hr_out VALUES ((p->>'n')::int, current_user, 'sql');
    SELECT 10 / ((p->>'n')::int % 3);
$$;
RESET ROLE;
SELECT replay_handler FROM dlq_configure('hr_sq', replay_handler => 'hr_sql(jsonb)');
SELECT count(dlq_store('hr_sq', jsonb_build_object('n', g), 'e')) AS stored FROM generate_series(1, 7) g;
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_sq') r;
SELECT string_agg(n::text, ',' ORDER BY n) AS kept FROM hr_out WHERE note = 'sql';
SELECT string_agg(payload->>'n', ',' ORDER BY message_id) AS pending FROM dlq.messages
 WHERE queue = 'hr_sq' AND status = 'pending' AND sqlstate = '22012';

-- A handler that stores a new message into its own queue (splitting a
-- batch, say): the call replays what was there when it began and ends; the
-- new messages wait for the next call.
CREATE FUNCTION hr_split(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dlq_store('hr_split', p || jsonb_build_object('n', (p->>'n')::int + 1), 'split');
END $$;
SELECT replay_handler FROM dlq_configure('hr_split', replay_handler => 'hr_split(jsonb)');
-- (1000 messages: a full batch, after which the call would look for more;
-- max_messages only bounds the test if that ever regresses.)
SELECT count(dlq_store('hr_split', jsonb_build_object('n', g * 10), 'e')) AS stored FROM generate_series(1, 1000) g;
SELECT r->'requested' AS requested, r->'replayed' AS replayed
  FROM dlq_reprocess_all('hr_split', max_messages => 5000) r;
SELECT status, count(*) FROM dlq.messages WHERE queue = 'hr_split' GROUP BY status ORDER BY status;

-- A dropped handler leaves its OID behind: 42883 for the whole call.
SET ROLE hr_op;
CREATE FUNCTION hr_gone(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
RESET ROLE;
SELECT replay_handler FROM dlq_configure('hr_gq', replay_handler => 'hr_gone(jsonb)');
SELECT dlq_store('hr_gq', '{"n": 1}', 'e') IS NOT NULL AS stored;
DROP FUNCTION hr_gone(jsonb);
\set VERBOSITY terse
SELECT regexp_replace(dlq_test.err($$SELECT dlq_reprocess_all('hr_gq')$$), 'OID \d+', 'OID N');
\set VERBOSITY default
SELECT status, attempts FROM dlq.messages WHERE queue = 'hr_gq';

-- Many messages, few failing: far fewer subtransactions than messages.  The
-- handler writes, so every subtransaction that ran it took a transaction
-- id: 3000 messages, 30 failing, use under 5% of that.  Every message
-- failing: one subtransaction each, no more.
SET ROLE hr_op;
CREATE TABLE hr_sink (n int);
CREATE FUNCTION hr_every_100th(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hr_sink VALUES ((p->>'n')::int);
    IF (p->>'n')::int % 100 = 0 THEN
        RAISE EXCEPTION 'no';
    END IF;
END $$;
RESET ROLE;
SELECT replay_handler FROM dlq_configure('hr_mq', replay_handler => 'hr_every_100th(jsonb)');
SELECT count(dlq_store('hr_mq', jsonb_build_object('n', g), 'e')) AS stored FROM generate_series(1, 3000) g;
SELECT pg_current_xact_id() AS x0 \gset
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_mq') r;
SELECT pg_current_xact_id()::text::bigint - :'x0'::text::bigint - 1 < 150 AS under_5_percent_xids;
SELECT count(*) AS sink_rows, count(DISTINCT n) AS distinct_rows FROM hr_sink;
UPDATE dlq.messages SET payload = '{"n": 0}' WHERE queue = 'hr_mq' AND status = 'pending';
SELECT pg_current_xact_id() AS x0 \gset
SELECT r->'replayed' AS replayed, r->'failed' AS failed FROM dlq_reprocess_all('hr_mq') r;
SELECT pg_current_xact_id()::text::bigint - :'x0'::text::bigint - 1 <= 30 + 2 AS one_xid_per_message;

DROP OWNED BY hr_op, hr_other CASCADE;
DROP ROLE hr_op, hr_other;
