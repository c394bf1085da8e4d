-- dlq_list and dlq_list_page filters of 1.1: error_class, since, until,
-- status 'archived', a queue's components list; plans; bad input.
\set VERBOSITY default
SET TimeZone = 'UTC';
-- 40 messages of lf_orders and 20 of lf_noise, interleaved.  n is the
-- message's number within its queue.  sqlstate 40001 is transient.
SELECT count(dlq_store(CASE WHEN i % 3 = 0 THEN 'lf_noise' ELSE 'lf_orders' END,
                 jsonb_build_object('i', i), 'failure ' || i,
                 component => CASE WHEN i % 4 = 0 THEN NULL WHEN i % 2 = 0 THEN 'sink' ELSE 'ingest' END,
                 sqlstate => CASE WHEN i % 10 = 0 THEN NULL WHEN i % 5 = 0 THEN '40001'
                                  WHEN i % 7 = 0 THEN '23503' ELSE '23505' END))
  FROM generate_series(1, 60) i;
-- stored_at one hour apart in id order, from hour 0 (i = 1), hour 0 being
-- a day from now: stored_at must grow with message_id as it does when
-- messages are stored (src/list.c, list_time_bounds), also across the
-- messages other tests stored before.
CREATE TEMP TABLE lf_t0 AS SELECT date_trunc('hour', now()) + interval '1 day' AS t0;
CREATE FUNCTION pg_temp.at(h int, m int DEFAULT 0) RETURNS timestamptz LANGUAGE sql AS $$
    SELECT t0 + h * interval '1 hour' + m * interval '1 minute' FROM lf_t0
$$;
UPDATE dlq.messages m SET stored_at = (SELECT pg_temp.at(0)) + ((m.payload->>'i')::int - 1) * interval '1 hour'
 WHERE m.queue IN ('lf_orders', 'lf_noise');
-- a list of messages as their numbers (i), in the order returned
CREATE FUNCTION pg_temp.ids(ms dlq.message[]) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg((ms[k]).payload->>'i', ' ' ORDER BY k), '(none)')
      FROM generate_subscripts(ms, 1) k
$$;
-- a page as the message numbers (i) in the order returned
CREATE FUNCTION pg_temp.page(p jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce((SELECT string_agg(e->'payload'->>'i', ' ' ORDER BY o)
                       FROM jsonb_array_elements(p->'messages') WITH ORDINALITY AS x(e, o)), '(none)')
           || ' | has_more ' || (p->>'has_more')
           || CASE WHEN p->'next_cursor' <> 'null' THEN ' | cursor at i='
                   || (SELECT m.payload->>'i' FROM dlq.messages m WHERE m.message_id = (p->>'next_cursor')::bigint)
                   ELSE '' END
$$;
SELECT min(message_id) AS base FROM dlq.messages WHERE queue IN ('lf_orders', 'lf_noise') \gset

-- Each filter alone.
SELECT 'error_class transient' AS f, pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', error_class => 'transient') m
UNION ALL
SELECT 'error_class permanent', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', error_class => 'permanent') m
UNION ALL
SELECT 'since hour 36', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', since => pg_temp.at(36)) m
UNION ALL
SELECT 'until hour 10', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', until => pg_temp.at(10)) m
UNION ALL
SELECT 'since = stored_at of i=8 (inclusive)', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', since => pg_temp.at(7), until => pg_temp.at(11)) m
UNION ALL
SELECT 'sqlstate 23503', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', sqlstate => '23503') m
UNION ALL
SELECT 'component sink', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', component => 'sink') m;

-- Combinations, with and without a queue, oldest or newest first.
SELECT 'sink + 23505 + since' AS f, pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', component => 'sink', sqlstate => '23505', since => pg_temp.at(20)) m
UNION ALL
SELECT 'ingest + transient', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', component => 'ingest', error_class => 'transient') m
UNION ALL
SELECT '23505 + [hour 10, hour 30) newest first', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', sqlstate => '23505', since => pg_temp.at(10), until => pg_temp.at(30), newest_first => true) m
UNION ALL
SELECT 'all queues, 40001, since', pg_temp.ids(array_agg(m))
  FROM dlq_list(sqlstate => '40001', since => pg_temp.at(20), until => pg_temp.at(100)) m WHERE m.queue LIKE 'lf\_%'
UNION ALL
SELECT 'all queues, sink, until, newest first', pg_temp.ids(array_agg(m))
  FROM dlq_list(component => 'sink', until => pg_temp.at(12), newest_first => true) m WHERE m.queue LIKE 'lf\_%'
UNION ALL
SELECT 'all queues, permanent, [hour 20, hour 26)', pg_temp.ids(array_agg(m))
  FROM dlq_list(error_class => 'permanent', since => pg_temp.at(20), until => pg_temp.at(26)) m WHERE m.queue LIKE 'lf\_%'
UNION ALL
SELECT 'nothing in range', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', since => pg_temp.at(500), until => pg_temp.at(600)) m
UNION ALL
SELECT 'infinite range', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', error_class => 'transient', since => '-infinity', until => 'infinity') m
UNION ALL
SELECT 'until -infinity-ish: before everything', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', until => '4713-01-01 00:30:00+00 BC') m
UNION ALL
SELECT 'since near the end of time', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', since => '294276-12-31 23:00:00+00') m
UNION ALL
SELECT 'until near the end of time', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', error_class => 'transient', until => '294276-12-31 23:30:00+00') m
UNION ALL
SELECT 'since near the beginning of time', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', error_class => 'transient', since => '4713-01-01 00:10:00+00 BC') m;

-- Cursors with filters: pages of 3, forward and backward, as dlq_list and
-- as dlq_list_page (next_cursor and has_more exact, also for a page that
-- ends exactly at the last match).
SELECT pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', cursor => NULL, batch_size => 3, sqlstate => '23505', since => pg_temp.at(10), until => pg_temp.at(30)) m;
SELECT pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', cursor => (SELECT message_id FROM dlq.messages WHERE payload->>'i' = '17'), batch_size => 3, sqlstate => '23505', since => pg_temp.at(10), until => pg_temp.at(30)) m;
CREATE TEMP TABLE walk (dir text, page int, shown text);
DO $$
DECLARE
    cur bigint;
    p jsonb;
    i int;
    d bool;
BEGIN
    FOREACH d IN ARRAY ARRAY[false, true] LOOP
        cur := NULL;
        i := 0;
        LOOP
            i := i + 1;
            p := dlq_list_page('lf_orders', cur, 3, 'pending', NULL, '23505', d, 'permanent',
                               pg_temp.at(10), pg_temp.at(30));
            INSERT INTO walk VALUES (CASE WHEN d THEN 'newest first' ELSE 'oldest first' END, i, pg_temp.page(p));
            EXIT WHEN NOT (p->>'has_more')::bool OR i > 10;
            cur := (p->>'next_cursor')::bigint;
        END LOOP;
    END LOOP;
END $$;
SELECT * FROM walk ORDER BY dir DESC, page;
-- exactly the matches: has_more false on a full page
SELECT pg_temp.page(dlq_list_page('lf_orders', batch_size => 4, error_class => 'transient', since => pg_temp.at(5)));
SELECT pg_temp.page(dlq_list_page('lf_orders', batch_size => 3, error_class => 'transient', since => pg_temp.at(5)));
SELECT pg_temp.page(dlq_list_page('lf_orders', batch_size => 3, error_class => 'transient', since => pg_temp.at(5), newest_first => true));
SELECT pg_temp.page(dlq_list_page('lf_orders', cursor => :base + 1000000, newest_first => true, batch_size => 2, component => 'ingest', until => pg_temp.at(9)));

-- status 'archived', and 'any' covers it.
UPDATE dlq.messages SET status = 'resolved', resolved_at = stored_at,
       slot = (SELECT s.slot FROM dlq.slots s WHERE s.state = 'current')
 WHERE queue = 'lf_orders' AND payload->>'i' IN ('1', '2');
UPDATE dlq.messages SET status = 'archived', resolved_at = stored_at,
       slot = (SELECT s.slot FROM dlq.slots s WHERE s.state = 'current')
 WHERE queue = 'lf_orders' AND payload->>'i' IN ('4', '5', '7');
SELECT 'archived' AS f, pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', status => 'archived') m
UNION ALL
SELECT 'archived, transient', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', status => 'archived', error_class => 'transient') m
UNION ALL
SELECT 'any, until 08:00', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', status => 'any', until => pg_temp.at(8)) m
UNION ALL
SELECT 'any, until 08:00, newest first, 4', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', status => 'any', until => pg_temp.at(8), newest_first => true, batch_size => 4) m
UNION ALL
SELECT 'any, all queues, sqlstate 23505, until 05:00', pg_temp.ids(array_agg(m)) FROM dlq_list(status => 'any', sqlstate => '23505', until => pg_temp.at(5)) m WHERE m.queue LIKE 'lf\_%'
UNION ALL
SELECT 'pending, until 08:00', pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', until => pg_temp.at(8)) m;
SELECT pg_temp.page(dlq_list_page('lf_orders', status => 'archived', batch_size => 2));

-- since and until map onto message ids, with an hour of slack for messages
-- stored by a transaction that began before its INSERT (src/list.c,
-- list_time_bounds): i=59 of lf_orders gets a stored_at 50 minutes older
-- than i=58's, as if its transaction had begun long before it stored it,
-- and is still found; i=56 gets one 30 hours older than its neighbours
-- (outside the slack) and is missed by an until that falls before its
-- neighbours, as documented; since alone still finds it.
UPDATE dlq.messages SET stored_at = (SELECT pg_temp.at(57, 10)) WHERE queue = 'lf_orders' AND payload->>'i' = '59';
UPDATE dlq.messages SET stored_at = (SELECT pg_temp.at(1, 30)) WHERE queue = 'lf_orders' AND payload->>'i' = '56';
SELECT 'within the slack: [hour 57:05, hour 57:20)' AS f, pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', since => pg_temp.at(57, 5), until => pg_temp.at(57, 20)) m
UNION ALL
SELECT 'outside the slack: [hour 1, hour 2)', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', since => pg_temp.at(1), until => pg_temp.at(2)) m
UNION ALL
SELECT 'since alone finds it (no upper bound)', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', since => pg_temp.at(1), batch_size => 1000) m
UNION ALL
SELECT 'until alone misses it too', pg_temp.ids(array_agg(m))
  FROM dlq_list('lf_orders', until => pg_temp.at(2)) m;
UPDATE dlq.messages m SET stored_at = (SELECT pg_temp.at(0)) + ((m.payload->>'i')::int - 1) * interval '1 hour'
 WHERE m.queue = 'lf_orders' AND payload->>'i' IN ('56', '59');

-- A queue's components list: a component not on it is an error when the
-- queue is given (dlq_configure sets the list; here the column directly).
UPDATE dlq.queues SET components = ARRAY['sink', 'ingest'] WHERE queue = 'lf_orders';
SELECT count(*) FROM dlq_list('lf_orders', component => 'sink');
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', component => 'enrich')$$);
SELECT dlq_test.err($$SELECT dlq_list_page('lf_orders', component => 'Sink')$$);
SELECT count(*) FROM dlq_list('lf_orders');
SELECT count(*) FROM dlq_list(component => 'enrich');
SELECT count(*) FROM dlq_list('lf_noise', component => 'enrich');
SELECT count(*) FROM dlq_list('nosuchqueue', component => 'enrich');
UPDATE dlq.queues SET components = NULL WHERE queue = 'lf_orders';
SELECT count(*) FROM dlq_list('lf_orders', component => 'enrich');

-- The library serves 1.0's seven arguments (a database not yet updated
-- calls it so): the same entry points with PG_NARGS() = 7.
CREATE FUNCTION pg_temp.list7(text, bigint, integer, text, text, text, boolean)
RETURNS SETOF dlq.message LANGUAGE c AS '$libdir/dlq', 'dlq_list';
CREATE FUNCTION pg_temp.page7(text, bigint, integer, text, text, text, boolean)
RETURNS jsonb LANGUAGE c AS '$libdir/dlq', 'dlq_list_page';
SELECT pg_temp.ids(array_agg(m)) FROM pg_temp.list7('lf_orders', NULL, 5, 'pending', 'sink', '23505', true) m;
SELECT pg_temp.page(pg_temp.page7('lf_orders', NULL, 5, 'pending', 'sink', '23505', true));

-- Every page is a bounded index range scan: these are the statements
-- src/list.c prepares (list_page_sql), checked as custom and as generic
-- plans, with sorts, sequential and bitmap scans disabled as list_run does.
-- Bounded: both ends of the message_id range are index conditions, so the
-- scan starts and stops there, and nothing of the range is a filter.
CREATE FUNCTION pg_temp.range_scan(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || stmt LOOP
        plan := plan || line || E'\n';
    END LOOP;
    IF plan ~ 'Index Scan' AND plan !~ '(Seq Scan|Bitmap)'
       AND plan !~ 'Filter: [^\n]*message_id'
       AND plan ~ 'Index Cond: [^\n]*\(message_id > [^\n]*\) AND \(message_id < '
       AND plan !~ 'Index Scan[^\n]* using [^\n]*pkey' THEN
        IF plan !~ '(^|->  )Sort\n' THEN
            RETURN 'bounded index range scan';
        END IF;
        IF plan ~ '^Limit\n  ->  Sort\n' AND (SELECT count(*) FROM regexp_matches(plan, '(^|->  )Sort\n', 'g')) = 1
           AND (SELECT count(*) FROM regexp_matches(plan, '->  Limit\n', 'g')) = 6 THEN
            RETURN 'six bounded index range pages, merged';
        END IF;
    END IF;
    RETURN plan;
END $$;
-- the index each prefix uses
CREATE FUNCTION pg_temp.index_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    found text[] := '{}';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || stmt LOOP
        IF line ~ 'using messages_live_' THEN
            found := found || substring(line from 'using (messages_live_[a-z_]+)');
        END IF;
    END LOOP;
    RETURN array_to_string(ARRAY(SELECT DISTINCT unnest(found) ORDER BY 1), ', ');
END $$;
-- queue + status + sqlstate, since and until, error_class (dlq_list)
PREPARE page_qs_sqlstate(text, bigint, int, text, text, text, int, bigint, text, timestamptz, timestamptz) AS
 SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status
   AND m.sqlstate = $6::pg_catalog.bpchar AND m.message_id > $2 AND m.message_id < $8
   AND m.error_class = $9 AND m.stored_at >= $10 AND m.stored_at < $11
 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $7;
-- queue + status + component + sqlstate, newest first (dlq_list_page)
PREPARE page_qsc_desc(text, bigint, int, text, text, text, int, bigint) AS
 SELECT pg_catalog.to_jsonb(m), m.message_id FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status
   AND m.component = $5 AND m.message_id > $2 AND m.message_id < $8 AND m.sqlstate = $6::pg_catalog.bpchar
 ORDER BY m.queue DESC, m.status DESC, m.component DESC, m.message_id DESC LIMIT $3 + $7;
-- queue + status, until
PREPARE page_qs_until(text, bigint, int, text, int, bigint, timestamptz) AS
 SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status
   AND m.message_id > $2 AND m.message_id < $6 AND m.stored_at < $7
 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + $5;
-- status only (all queues) + sqlstate + since
PREPARE page_s(bigint, int, text, text, int, bigint, timestamptz) AS
 SELECT m.* FROM dlq.message m WHERE m.status = ANY (ARRAY[$3::dlq.status])
   AND m.message_id > $1 AND m.message_id < $6 AND m.sqlstate = $4::pg_catalog.bpchar AND m.stored_at >= $7
 ORDER BY m.status, m.message_id LIMIT $2 + $5;
-- status 'any' of a queue with sqlstate: six pages, one per state, merged
PREPARE page_q_any(text, bigint, int, text, int, bigint) AS SELECT p.* FROM (
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'pending'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'replaying'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'review'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'resolved'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'expired'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'archived'::dlq.status AND m.sqlstate = $4::pg_catalog.bpchar
   AND m.message_id > $2 AND m.message_id < $6 ORDER BY m.queue, m.status, m.sqlstate, m.message_id LIMIT $3 + $5)
 ) p ORDER BY p.message_id LIMIT $3 + $5;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SET enable_sort = off;
SET enable_incremental_sort = off;
SET plan_cache_mode = force_custom_plan;
SELECT pg_temp.range_scan($$EXECUTE page_qs_sqlstate('lf_orders', 5, 100, 'pending', NULL, '23505', 0, 9000000000, 'permanent', '2026-01-01', '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_qsc_desc('lf_orders', 0, 100, 'pending', 'sink', '23505', 1, 9000000000)$$);
SELECT pg_temp.range_scan($$EXECUTE page_qs_until('lf_orders', 0, 100, 'pending', 1, 500, '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_s(5, 100, 'pending', '23505', 0, 9000000000, '2026-01-01')$$);
SELECT pg_temp.range_scan($$EXECUTE page_q_any('lf_orders', 5, 100, '23505', 0, 9000000000)$$);
SET plan_cache_mode = force_generic_plan;
SELECT pg_temp.range_scan($$EXECUTE page_qs_sqlstate('lf_orders', 5, 100, 'pending', NULL, '23505', 0, 9000000000, 'permanent', '2026-01-01', '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_qsc_desc('lf_orders', 0, 100, 'pending', 'sink', '23505', 1, 9000000000)$$);
SELECT pg_temp.range_scan($$EXECUTE page_qs_until('lf_orders', 0, 100, 'pending', 1, 500, '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_s(5, 100, 'pending', '23505', 0, 9000000000, '2026-01-01')$$);
SELECT pg_temp.range_scan($$EXECUTE page_q_any('lf_orders', 5, 100, '23505', 0, 9000000000)$$);
-- which index serves which prefix: sqlstate pages the new index, component
-- pages the component index; with both, whichever the planner estimates
-- narrower, the other filter checked on its range
PREPARE page_qsc(text, bigint, int, text, text, int, bigint) AS
 SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status
   AND m.component = $5 AND m.message_id > $2 AND m.message_id < $7
 ORDER BY m.queue, m.status, m.component, m.message_id LIMIT $3 + $6;
SELECT pg_temp.index_of($$EXECUTE page_qs_sqlstate('lf_orders', 5, 100, 'pending', NULL, '23505', 0, 9000000000, 'permanent', '2026-01-01', '2026-01-02')$$) AS sqlstate_page;
SELECT pg_temp.index_of($$EXECUTE page_qsc('lf_orders', 0, 100, 'pending', 'sink', 1, 9000000000)$$) AS component_page;
SELECT pg_temp.index_of($$EXECUTE page_qsc_desc('lf_orders', 0, 100, 'pending', 'sink', '23505', 1, 9000000000)$$)
       IN ('messages_live_queue_status_sqlstate_id', 'messages_live_queue_status_component_id') AS both_page_on_either;
-- With many other queues' messages, and many of this queue in other
-- states, before and after, the same holds.
SELECT count(dlq_store('a_lf_noise', '{}', 'noise', sqlstate => '23505')) FROM generate_series(1, 3000);
UPDATE dlq.messages SET stored_at = (SELECT pg_temp.at(1000)),
       status = CASE WHEN message_id % 2 = 0 THEN 'review' ELSE status END
 WHERE queue = 'a_lf_noise';
ANALYZE dlq.messages;
SELECT pg_temp.range_scan($$EXECUTE page_qs_sqlstate('lf_orders', 5, 100, 'pending', NULL, '23505', 0, 9000000000, 'permanent', '2026-01-01', '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_qs_until('lf_orders', 0, 100, 'pending', 1, 500, '2026-01-02')$$);
SELECT pg_temp.range_scan($$EXECUTE page_s(5, 100, 'pending', '23505', 0, 9000000000, '2026-01-01')$$);
-- The check can fail: 1.0's form of a page, row comparisons, has an upper
-- bound that does not stop the scan (PostgreSQL 15 ends a range scan on a
-- row comparison only where its first column changes).
PREPARE page_rowcompare(text, bigint, int, text, bigint) AS SELECT m.* FROM dlq.message m
 WHERE (m.queue, m.status, m.message_id) > ($1, $4::dlq.status, $2)
   AND (m.queue, m.status, m.message_id) < ($1, $4::dlq.status, $5)
 ORDER BY m.queue, m.status, m.message_id LIMIT $3;
SELECT pg_temp.range_scan($$EXECUTE page_rowcompare('lf_orders', 5, 100, 'pending', 500)$$) = 'bounded index range scan' AS rowcompare_bounded;
RESET plan_cache_mode;
RESET enable_seqscan;
RESET enable_bitmapscan;
RESET enable_sort;
RESET enable_incremental_sort;
-- and the filtered pages still answer the same
SELECT pg_temp.ids(array_agg(m)) FROM dlq_list('lf_orders', sqlstate => '23505', since => pg_temp.at(10), until => pg_temp.at(30)) m;

-- Bad input: every argument is checked before anything is read.
SELECT dlq_test.err($$SELECT * FROM dlq_list(error_class => 'fatal')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(error_class => 'Transient')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(error_class => '')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(error_class => E'trans\nient')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(error_class => repeat('transient', 100000))$$);
SELECT dlq_test.err($$SELECT dlq_list_page(error_class => 'sometimes')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(since => '2026-01-02', until => '2026-01-01')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(since => '2026-01-01', until => '2026-01-01')$$);
SELECT dlq_test.err($$SELECT dlq_list_page(since => 'infinity', until => 'infinity')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => 'archive')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => repeat('x', 1000000))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => E'pending\u0001')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => NULL, error_class => 'transient')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(batch_size => NULL, since => now())$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(newest_first => NULL, until => now())$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(queue => repeat('q', 100000), error_class => 'transient')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', component => repeat('c', 100000))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', component => U&'sink\0085')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', sqlstate => '2350')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', sqlstate => '23505 ')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', cursor => -1, since => now())$$);
-- the first bad argument is reported, and a bad argument wins over a
-- component the queue does not list
UPDATE dlq.queues SET components = ARRAY['sink'] WHERE queue = 'lf_orders';
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', component => 'enrich', error_class => 'x')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', component => 'enrich', since => '2026-01-02', until => '2026-01-01')$$);
UPDATE dlq.queues SET components = NULL WHERE queue = 'lf_orders';

-- Who may call: dlq_reader (and so dlq_operator), not dlq_writer alone.
SELECT pg_temp.at(0) AS h0 \gset
CREATE ROLE lf_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE lf_writer LOGIN IN ROLE dlq_writer;
SET ROLE lf_reader;
SELECT count(*) FROM dlq_list('lf_orders', error_class => 'permanent', since => :'h0');
SELECT (dlq_list_page('lf_orders', status => 'archived'))->>'has_more' AS has_more;
SET ROLE lf_writer;
SELECT dlq_test.err($$SELECT * FROM dlq_list('lf_orders', error_class => 'permanent')$$);
SELECT dlq_test.err($$SELECT dlq_list_page('lf_orders', since => now())$$);
RESET ROLE;
DROP ROLE lf_reader;
DROP ROLE lf_writer;
