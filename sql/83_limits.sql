-- Limits (DESIGN 7.1, issue 11 finding 10): every argument of every SQL
-- function of dlq is checked before anything is written.
--   names (queue, component, stage, channel): one validator, 1-63 bytes, no
--     C0 or C1 control characters, 22023; a channel may not be dlq_alerts;
--   text and jsonb arguments (metadata, error_detail, note): at most 54000
--     bytes, 54000 program_limit_exceeded, like payload, error and dedup_key;
--   intervals: a lower bound (positive, or not negative) and an upper bound
--     (100 years for retention and ages, 1 year for delays and leases), 22023.
-- Each rejected call is followed by a check that nothing changed.
SET client_min_messages = warning;

CREATE ROLE sec_limits_op;
GRANT dlq_operator, dlq_writer TO sec_limits_op;

-- What a rejected call must leave alone: the queues (all of them, and the
-- settings of ours), the messages and the events of our queues.  The worker
-- may touch other files' queues meanwhile, never these.
CREATE FUNCTION dlq_test.lim_state() RETURNS text
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT concat_ws(' ',
        (SELECT count(*) FROM dlq.queues),
        (SELECT md5(coalesce(string_agg(row(q.queue, q.max_attempts, q.retention,
                q.resolved_retention, q.replay_target, q.channel, q.require_listener,
                q.auto_retry, q.retry_base, q.retry_factor, q.retry_max, q.alert_threshold,
                q.alert_cooldown, q.paused)::text, ',' ORDER BY q.queue), ''))
           FROM dlq.queues q WHERE q.queue LIKE 'lim%'),
        (SELECT count(*) FROM dlq.messages WHERE queue LIKE 'lim%'),
        (SELECT md5(coalesce(string_agg(row(m.message_id, m.status, m.component, m.error,
                m.error_detail, m.metadata, m.attempts, m.next_retry_at,
                m.claim_expires_at, m.resolved_at)::text, ',' ORDER BY m.message_id), ''))
           FROM dlq.messages m WHERE m.queue LIKE 'lim%'),
        (SELECT count(*) FROM dlq.events WHERE queue LIKE 'lim%'),
        (SELECT count(*) FROM dlq.stages WHERE stage LIKE 'lim%'))
$$;
-- dlq_test.lim(stmt): the error of stmt, and whether the state stayed as it was.
CREATE FUNCTION dlq_test.lim(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    before text := dlq_test.lim_state();
    result text := dlq_test.err(stmt);
BEGIN
    RETURN result || CASE WHEN dlq_test.lim_state() = before THEN '' ELSE E'\nCHANGED STATE' END;
END $$;

SELECT (dlq_configure('lim_q')).queue AS configured;
SELECT dlq_store('lim_q', '{"n": 1}', 'failed', component => 'c1') AS lim_id \gset

-- ---------------------------------------------------------------------------
-- Names: one validator for queue, component, stage and channel.
-- ---------------------------------------------------------------------------
-- C1 controls are U+0080..U+009F (0xc2 0x80..0x9f in UTF-8); U+00A0 and
-- other characters are fine.
SELECT dlq_test.lim($$SELECT dlq_store(U&'lim\0085q', '{}', 'e')$$);
SELECT dlq_test.lim($$SELECT dlq_store(U&'lim\0080q', '{}', 'e')$$);
SELECT dlq_test.lim($$SELECT dlq_store(U&'lim\009Fq', '{}', 'e')$$);
SELECT dlq_test.lim($$SELECT dlq_store(U&'lim\007Fq', '{}', 'e')$$);
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', 'e', component => U&'c\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', 'e', component => repeat('c', 64))$$);
SELECT dlq_store(U&'lim_\00A0é', '{}', 'e') > 0 AS nbsp_and_accents_are_names;
SELECT dlq_store('lim_q', '{}', 'e', component => U&'c\00A0é') > 0 AS in_components_too;
DELETE FROM dlq.messages WHERE queue = U&'lim_\00A0é' OR component = U&'c\00A0é';
DELETE FROM dlq.queues WHERE queue = U&'lim_\00A0é';
-- every function that takes a name
SELECT dlq_test.lim($$SELECT * FROM dlq_list(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_list('lim_q', component => U&'c\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_list_page(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_list_page('lim_q', component => U&'c\0085')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_facets(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_list('lim_q', error_class => repeat('e', 1048577))$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_facets('lim_q', by => repeat('b', 1048577))$$);
SELECT dlq_test.lim($$SELECT dlq_reprocess_all(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_reprocess_all('lim_q', component => U&'c\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_discard_all(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_discard_all('lim_q', component => U&'c\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_configure(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_pause(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_resume(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_listen(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_claim(U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT * FROM etl_status(U&'lim\0085')$$);
CREATE TABLE lim_src (id bigint PRIMARY KEY);
SELECT dlq_test.lim($$SELECT etl_register_stage(U&'lim\0085', 'lim_src', 'id')$$);
SELECT dlq_test.lim($$SELECT etl_watermark(U&'lim\0085', 1)$$);
-- dlq_attach: the queue given, or the table's name
CREATE TABLE lim_t (id int PRIMARY KEY);
CREATE TABLE U&"lim\0085t" (id int PRIMARY KEY);
SELECT dlq_test.lim($$SELECT dlq_attach('lim_t', queue => U&'lim\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_attach(U&'"lim\0085t"')$$);
SELECT count(*) AS no_trigger_left FROM pg_trigger WHERE tgrelid IN ('lim_t'::regclass, U&'"lim\0085t"'::regclass);
-- a capture trigger created by hand with a bad component fails at once
CREATE TRIGGER lim_cap BEFORE INSERT ON lim_t FOR EACH ROW
    EXECUTE FUNCTION dlq_capture('lim_q', U&'c\0085');
SELECT dlq_test.lim($$INSERT INTO lim_t VALUES (1)$$);
DROP TRIGGER lim_cap ON lim_t;
-- channels: the validator, and never the worker's alert channel
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', channel => U&'ch\0085')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', channel => repeat('c', 64))$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', channel => 'dlq_alerts')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_new', channel => 'dlq_alerts')$$);
-- channels are case-sensitive strings to dlq_listen and NOTIFY
SELECT channel FROM dlq_configure('lim_q', channel => 'DLQ_ALERTS');
SELECT channel FROM dlq_configure('lim_q', channel => 'dlq_lim_q');
-- a queue named "alerts" does not get the alert channel by default either
SELECT dlq_listen('alerts') ~ '^dlq_alerts_[0-9a-f]{8}$' AS own_channel;
SELECT channel = dlq_listen('alerts') AS kept FROM dlq.queues WHERE queue = 'alerts';
UNLISTEN *;
DELETE FROM dlq.queues WHERE queue = 'alerts';

-- ---------------------------------------------------------------------------
-- Sizes: metadata, error_detail and note at most 54000 bytes (54000).
-- ---------------------------------------------------------------------------
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', 'e', metadata => jsonb_build_object('x', repeat('x', 54000)))$$);
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', 'e', error_detail => jsonb_build_object('x', repeat('x', 54000)))$$);
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', 'e', metadata => jsonb_build_object('x', repeat('x', 2 * 1024 * 1024)))$$);
SELECT dlq_store('lim_q', '{}', 'e', metadata => jsonb_build_object('x', repeat('x', 53000)),
                 error_detail => jsonb_build_object('x', repeat('x', 53000))) > 0 AS just_below_is_fine;
DELETE FROM dlq.messages WHERE queue = 'lim_q' AND message_id <> :lim_id;
SELECT dlq_test.lim(format($$SELECT dlq_resolve(ARRAY[%s]::bigint[], repeat('n', 54001))$$, :lim_id));
SELECT dlq_test.lim(format($$SELECT dlq_resolve(ARRAY[%s]::bigint[], repeat('é', 27001))$$, :lim_id));
-- payload and error text keep their own limit, dlq.max_payload_bytes
SET dlq.max_payload_bytes = 1024;
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', jsonb_build_object('x', repeat('x', 1024)), 'e')$$);
SELECT dlq_test.lim($$SELECT dlq_store('lim_q', '{}', repeat('e', 1025))$$);
RESET dlq.max_payload_bytes;

-- ---------------------------------------------------------------------------
-- Intervals: lower and upper bounds (22023), checked before anything runs.
-- ---------------------------------------------------------------------------
-- 1.0 took retention => '100000000 years', after which every dlq_store into
-- the queue failed with 22008 and internal SQL in its context.
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => '100000000 years')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => '100 years 601 days')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => '0')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', resolved_retention => '102 years')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', resolved_retention => '-1 s')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retry_base => '1 year 6 days 1 s')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retry_base => '0')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retry_max => '400 days')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retry_max => '-1 h')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', alert_cooldown => '2 years')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', alert_cooldown => '-1 s')$$);
-- one bad argument rejects the whole call, and creates no queue
SELECT dlq_test.lim($$SELECT dlq_configure('lim_new', max_attempts => 3, retention => '1000 years')$$);
-- a year counts as 366 days, so 365 days are a year
SELECT retry_max FROM dlq_configure('lim_q', retry_max => '365 days');
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retry_max => '367 days')$$);
-- months, days and time are bounded each, not only in sum: '1000000 years
-- -359999000 days' is about 1000 days in total but overflows a timestamp
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => interval '1000000 years' - interval '359999000 days')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => interval '36601 days' - interval '1 year')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => interval '878424 hours' - interval '1 year')$$);
-- the largest values are accepted, and work
SELECT retention, resolved_retention, retry_base, retry_max, alert_cooldown
  FROM dlq_configure('lim_q', retention => '100 years', resolved_retention => '100 years',
                     retry_base => '1 year', retry_max => '1 year', alert_cooldown => '1 year');
SELECT dlq_store('lim_q', '{"n": 2}', 'failed') > 0 AS store_still_works;
SELECT retention, resolved_retention, retry_base, retry_max, alert_cooldown
  FROM dlq_configure('lim_q', retention => '30 days', resolved_retention => '7 days',
                     retry_base => '1 min', retry_max => '1 hour', alert_cooldown => '15 min');
-- dlq_discard_all(older_than)
SELECT dlq_test.lim($$SELECT dlq_discard_all('lim_q', older_than => '100000000 years')$$);
SELECT dlq_test.lim($$SELECT dlq_discard_all('lim_q', older_than => '-1 s')$$);
-- dlq_claim(visibility) and dlq_nack(retry_in): 1.0 failed with 22008
SELECT dlq_test.lim($$SELECT * FROM dlq_claim('lim_q', 1, '100000000 years')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_claim('lim_q', 1, '1 year 7 days')$$);
SELECT dlq_test.lim($$SELECT * FROM dlq_claim('lim_q', 1, '-1 s')$$);
SELECT (dlq_configure('lim_q', require_listener => false)).require_listener;
SELECT dlq_reprocess(ARRAY[:lim_id]::bigint[])->>'requested' AS requested;
SELECT count(*) AS claimed FROM dlq_claim('lim_q', 10, '1 year');
SELECT dlq_test.lim(format($$SELECT dlq_nack(%s, 'e', retry_in => '100000000 years')$$, :lim_id));
SELECT dlq_test.lim(format($$SELECT dlq_nack(%s, 'e', retry_in => '367 days')$$, :lim_id));
SELECT dlq_test.lim(format($$SELECT dlq_nack(%s, 'e', retry_in => '-1 s')$$, :lim_id));
-- dlq_nack(error): the same dlq.max_payload_bytes limit as dlq_store's error text
SELECT dlq_test.lim(format($$SELECT dlq_nack(%s, repeat('e', 1048577))$$, :lim_id));
SELECT dlq_nack(:lim_id, 'e', retry_in => '1 year') AS nacked;
SELECT status, next_retry_at > now() + interval '364 days' AS a_year_away
  FROM dlq.messages WHERE message_id = :lim_id;

-- ---------------------------------------------------------------------------
-- Every argument is covered: the functions a role can call and their
-- arguments, as a list to compare with the checks above.  The internal
-- dlq.* functions with arguments are not callable by dlq's roles.
-- ---------------------------------------------------------------------------
SELECT p.proname AS callable_function,
       pg_get_function_identity_arguments(p.oid) AS arguments
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dlq'
 WHERE d.deptype = 'e' AND p.pronargs > 0
   AND (has_function_privilege('dlq_writer', p.oid, 'EXECUTE')
        OR has_function_privilege('dlq_reader', p.oid, 'EXECUTE')
        OR has_function_privilege('dlq_operator', p.oid, 'EXECUTE'))
 ORDER BY p.oid::regprocedure::text;
SELECT p.oid::regprocedure AS internal_function
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dlq'
 WHERE d.deptype = 'e' AND p.pronargs > 0
   AND NOT (has_function_privilege('dlq_writer', p.oid, 'EXECUTE')
            OR has_function_privilege('dlq_reader', p.oid, 'EXECUTE')
            OR has_function_privilege('dlq_operator', p.oid, 'EXECUTE')
            OR has_function_privilege('public', p.oid, 'EXECUTE'))
 ORDER BY p.oid::regprocedure::text;

-- The same checks as a hostile operator: nothing different.
SET ROLE sec_limits_op;
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', retention => '100000000 years')$$);
SELECT dlq_test.lim($$SELECT dlq_configure('lim_q', channel => 'dlq_alerts')$$);
SELECT dlq_test.lim($$SELECT dlq_store(U&'lim\0085', '{}', 'e')$$);
RESET ROLE;

-- clean up
DELETE FROM dlq.messages WHERE queue LIKE 'lim%';
DELETE FROM dlq.events WHERE queue LIKE 'lim%' OR queue = 'alerts';
DELETE FROM dlq.queues WHERE queue LIKE 'lim%';
DROP TABLE lim_t, U&"lim\0085t", lim_src;
DROP FUNCTION dlq_test.lim(text), dlq_test.lim_state();
DROP OWNED BY sec_limits_op;
DROP ROLE sec_limits_op;
RESET client_min_messages;
