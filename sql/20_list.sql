-- dlq_list, dlq_list_page, dlq_get: keyset pages, filters, EXPLAIN, bad input.
\set VERBOSITY default
SELECT count(dlq_store(CASE WHEN i % 3 = 0 THEN 'l_billing' ELSE 'l_orders' END,
                 jsonb_build_object('n', i), 'failure ' || i,
                 component => CASE WHEN i % 2 = 0 THEN 'sink' ELSE 'ingest' END,
                 sqlstate => CASE WHEN i % 5 = 0 THEN '23503' ELSE '23505' END))
  FROM generate_series(1, 30) i;
SELECT min(message_id) AS base FROM dlq.messages WHERE queue IN ('l_orders', 'l_billing') \gset

-- Forward pages of 7 through one queue visit each message once, in order.
SELECT array_agg((payload->>'n')::int ORDER BY message_id) FROM dlq_list('l_orders', batch_size => 7);
SELECT array_agg((payload->>'n')::int ORDER BY message_id)
  FROM dlq_list('l_orders', cursor => (SELECT max(message_id) FROM dlq_list('l_orders', batch_size => 7)), batch_size => 7);
SELECT array_agg((payload->>'n')::int ORDER BY message_id DESC) FROM dlq_list('l_orders', batch_size => 5, newest_first => true);
SELECT array_agg((payload->>'n')::int ORDER BY message_id DESC)
  FROM dlq_list('l_orders', cursor => :base + 10, batch_size => 5, newest_first => true);

-- Filters: component, sqlstate, status, all queues.
SELECT array_agg((payload->>'n')::int ORDER BY message_id) FROM dlq_list('l_orders', component => 'sink', batch_size => 100);
SELECT array_agg((payload->>'n')::int ORDER BY message_id) FROM dlq_list('l_orders', sqlstate => '23503');
SELECT count(*) FROM dlq_list(batch_size => 1000) WHERE queue LIKE 'l\_%';
UPDATE dlq.messages SET status = 'resolved' WHERE queue = 'l_orders' AND payload->>'n' = '1';
SELECT count(*) FROM dlq_list(status => 'resolved') WHERE queue LIKE 'l\_%';
SELECT count(*) FROM dlq_list(status => 'any', batch_size => 1000) WHERE queue LIKE 'l\_%';
SELECT count(*) FROM dlq_list('l_orders', status => 'any');

-- Walk a queue with dlq_list_page until has_more is false.
CREATE TEMP TABLE walk (page int, n int[], has_more bool, next_cursor bigint);
DO $$
DECLARE
    cur bigint := NULL;
    p jsonb;
    i int := 0;
BEGIN
    LOOP
        i := i + 1;
        p := dlq_list_page('l_orders', cur, 6);
        INSERT INTO walk SELECT i, ARRAY(SELECT (m->'payload'->>'n')::int FROM jsonb_array_elements(p->'messages') m),
                                (p->>'has_more')::bool, (p->>'next_cursor')::bigint;
        EXIT WHEN NOT (p->>'has_more')::bool;
        cur := (p->>'next_cursor')::bigint;
    END LOOP;
END $$;
SELECT page, n, has_more, next_cursor IS NOT NULL AS has_cursor FROM walk ORDER BY page;
-- has_more is exact: a page that ends exactly at the last message says false.
SELECT (dlq_list_page('l_billing', batch_size => 10))->>'has_more' AS ten_of_ten,
       (dlq_list_page('l_billing', batch_size => 9))->>'has_more' AS nine_of_ten;
SELECT dlq_list_page('nosuchqueue');

-- Every page is an index range scan, with no sort of the whole set.  These are
-- the statements src/list.c prepares, checked as custom and as generic plans;
-- dlq.messages is partitioned, so a page merges one range per partition, and
-- a status 'any' page sorts at most six such pages (one per state);
-- the first column as "= ANY (ARRAY[...])" keeps the planner off the primary
-- key even when other queues' messages come first (see list_page_sql), and
-- list_run plans them with sorts and sequential scans disabled, as here.
-- sql/21_list_filters.sql checks that both ends of the id range bound the scan.
PREPARE page_qs(text, bigint, int, text) AS SELECT m.* FROM dlq.message m
 WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status AND m.message_id > $2 AND m.message_id < 9223372036854775807
 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0;
PREPARE page_qsc_desc(text, bigint, int, text, text) AS SELECT m.* FROM dlq.message m
 WHERE m.queue = ANY (ARRAY[$1]) AND m.status = $4::dlq.status AND m.component = $5
   AND m.message_id > 0 AND m.message_id < $2
 ORDER BY m.queue DESC, m.status DESC, m.component DESC, m.message_id DESC LIMIT $3 + 0;
PREPARE page_q_any(text, bigint, int) AS SELECT p.* FROM (
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'pending'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'replaying'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'review'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'resolved'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'expired'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 UNION ALL
 (SELECT m.* FROM dlq.message m WHERE m.queue = ANY (ARRAY[$1]) AND m.status = 'archived'::dlq.status
   AND m.message_id > $2 AND m.message_id < 9223372036854775807 ORDER BY m.queue, m.status, m.message_id LIMIT $3 + 0)
 ) p ORDER BY p.message_id LIMIT $3 + 0;
PREPARE page_s(bigint, int, text) AS SELECT m.* FROM dlq.message m
 WHERE m.status = ANY (ARRAY[$3::dlq.status]) AND m.message_id > $1 AND m.message_id < 9223372036854775807
 ORDER BY m.status, m.message_id LIMIT $2 + 0;
CREATE FUNCTION pg_temp.index_only(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || stmt LOOP
        plan := plan || line || E'\n';
    END LOOP;
    IF plan ~ 'Index Scan' AND plan !~ '(Seq Scan|Bitmap)' THEN
        /* Sort nodes, not Merge Append's "Sort Key" */
        IF plan !~ '(^|->  )Sort\n' THEN
            RETURN 'index range scan';
        END IF;
        IF plan ~ '^Limit\n  ->  Sort\n' AND (SELECT count(*) FROM regexp_matches(plan, '(^|->  )Sort\n', 'g')) = 1
           AND (SELECT count(*) FROM regexp_matches(plan, '->  Limit\n', 'g')) = 6 THEN
            RETURN 'six index range pages, merged';
        END IF;
    END IF;
    RETURN plan;
END $$;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SET enable_sort = off;
SET enable_incremental_sort = off;
SET plan_cache_mode = force_custom_plan;
SELECT pg_temp.index_only($$EXECUTE page_qs('l_orders', 5, 100, 'pending')$$);
SELECT pg_temp.index_only($$EXECUTE page_qsc_desc('l_orders', 50, 100, 'pending', 'sink')$$);
SELECT pg_temp.index_only($$EXECUTE page_q_any('l_orders', 5, 100)$$);
SELECT pg_temp.index_only($$EXECUTE page_s(5, 100, 'pending')$$);
SET plan_cache_mode = force_generic_plan;
SELECT pg_temp.index_only($$EXECUTE page_qs('l_orders', 5, 100, 'pending')$$);
SELECT pg_temp.index_only($$EXECUTE page_qsc_desc('l_orders', 50, 100, 'pending', 'sink')$$);
SELECT pg_temp.index_only($$EXECUTE page_q_any('l_orders', 5, 100)$$);
SELECT pg_temp.index_only($$EXECUTE page_s(5, 100, 'pending')$$);
-- With many other queues' messages before and after the same holds.
SELECT count(dlq_store('a_noise', '{}', 'noise')) FROM generate_series(1, 2000);
ANALYZE dlq.messages;
SELECT pg_temp.index_only($$EXECUTE page_qs('l_orders', 5, 100, 'pending')$$);
SELECT pg_temp.index_only($$EXECUTE page_s(5, 100, 'pending')$$);
RESET plan_cache_mode;
RESET enable_seqscan;
RESET enable_bitmapscan;
RESET enable_sort;
RESET enable_incremental_sort;

-- dlq_get
SELECT payload, error FROM dlq_get(:base);
SELECT dlq_test.err($$SELECT * FROM dlq_get(-1)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_get(NULL)$$);

-- Bad input: clear errors.
SELECT dlq_test.err($$SELECT * FROM dlq_list(batch_size => 0)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(batch_size => 1001)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(batch_size => NULL)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(cursor => -1)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => 'done')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(status => NULL)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(queue => '')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(queue => repeat('x', 64))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(component => E'a\nb')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(sqlstate => 'abc')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list(newest_first => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_list_page(batch_size => 1001)$$);
