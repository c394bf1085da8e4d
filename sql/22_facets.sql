-- dlq_facets: counts of a queue's messages by component, sqlstate,
-- error_class, status or source_relation, with the stored_at range of each.
\set VERBOSITY default
SET TimeZone = 'UTC';
SET DateStyle = 'ISO';
CREATE TABLE fc_target (id int PRIMARY KEY, v text);
CREATE TABLE fc_other_target (id int PRIMARY KEY);
-- 30 messages of fc_orders, 6 of fc_other; n = i.
SELECT count(dlq_store(CASE WHEN i % 6 = 0 THEN 'fc_other' ELSE 'fc_orders' END,
                 jsonb_build_object('i', i), 'failure ' || i,
                 component => CASE WHEN i % 5 = 0 THEN NULL WHEN i % 2 = 0 THEN 'sink' ELSE 'ingest' END,
                 sqlstate => CASE WHEN i % 7 = 0 THEN NULL WHEN i % 4 = 0 THEN '40001'
                                  WHEN i % 3 = 0 THEN '23503' ELSE '23505' END))
  FROM generate_series(1, 36) i;
-- stored_at a day apart in id order; some captured rows; some closed.
UPDATE dlq.messages m SET stored_at = timestamptz '2026-02-01 00:00+00' + ((m.payload->>'i')::int - 1) * interval '1 day',
       source_relation = CASE WHEN (m.payload->>'i')::int % 4 = 1 THEN 'fc_target'::regclass
                              WHEN (m.payload->>'i')::int % 4 = 2 THEN 'fc_other_target'::regclass END,
       operation = CASE WHEN (m.payload->>'i')::int % 4 IN (1, 2) THEN 'INSERT' END
 WHERE m.queue IN ('fc_orders', 'fc_other');
UPDATE dlq.messages SET status = 'review' WHERE queue = 'fc_orders' AND payload->>'i' IN ('2', '3', '4');
UPDATE dlq.messages SET status = 'resolved', resolved_at = stored_at,
       slot = (SELECT s.slot FROM dlq.slots s WHERE s.state = 'current')
 WHERE queue = 'fc_orders' AND payload->>'i' IN ('5', '7');
UPDATE dlq.messages SET status = 'archived', resolved_at = stored_at,
       slot = (SELECT s.slot FROM dlq.slots s WHERE s.state = 'current')
 WHERE queue = 'fc_orders' AND payload->>'i' IN ('1', '8', '9', '10');

-- Defaults: one queue's pending messages by sqlstate, largest first, then
-- by value (NULL last).
SELECT * FROM dlq_facets('fc_orders');
SELECT * FROM dlq_facets('fc_orders', 'component');
SELECT * FROM dlq_facets('fc_orders', 'error_class');
SELECT * FROM dlq_facets('fc_orders', 'source_relation');
SELECT * FROM dlq_facets('fc_orders', 'status', 'any');
SELECT * FROM dlq_facets('fc_orders', 'status');
SELECT * FROM dlq_facets('fc_orders', 'sqlstate', 'archived');
SELECT * FROM dlq_facets('fc_orders', 'component', 'any');
SELECT * FROM dlq_facets('fc_orders', 'error_class', 'review');
SELECT * FROM dlq_facets('nosuchqueue');
-- All queues: one row per queue and value.
SELECT * FROM dlq_facets(NULL, 'component') WHERE queue LIKE 'fc\_%';
SELECT * FROM dlq_facets(NULL, 'status', 'any') WHERE queue LIKE 'fc\_%';
SELECT * FROM dlq_facets(by => 'source_relation', status => 'any') WHERE queue LIKE 'fc\_%';

-- Every facet, in every state and for one queue or all, is what a plain
-- GROUP BY over dlq.messages says (stored_at is in id order here, so the
-- first and last message of a part are its oldest and newest).  A
-- source_relation is always schema-qualified: dlq_facets reads it with the
-- search_path of dlq's own functions, pg_catalog.
CREATE FUNCTION pg_temp.plain(q text, by text, st text)
RETURNS TABLE (queue text, value text, count bigint, oldest_at timestamptz, newest_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT m.queue, (%s)::text, count(*), min(m.stored_at), max(m.stored_at)
           FROM dlq.messages m
          WHERE ($1 IS NULL OR m.queue = $1) AND ($2 = ''any'' OR m.status::text = $2)
          GROUP BY 1, 2', CASE by WHEN 'status' THEN 'm.status::text' ELSE 'm.' || by END)
        USING q, st;
END $$;
SELECT b AS by, s AS status, q AS queue,
       (SELECT count(*) FROM dlq_facets(q, b, s) f WHERE f.queue LIKE 'fc\_%') AS parts,
       NOT EXISTS ((SELECT * FROM dlq_facets(q, b, s) f WHERE f.queue LIKE 'fc\_%'
                    EXCEPT ALL SELECT * FROM pg_temp.plain(q, b, s) p WHERE p.queue LIKE 'fc\_%')
                   UNION ALL
                   (SELECT * FROM pg_temp.plain(q, b, s) p WHERE p.queue LIKE 'fc\_%'
                    EXCEPT ALL SELECT * FROM dlq_facets(q, b, s) f WHERE f.queue LIKE 'fc\_%')) AS same
  FROM unnest(ARRAY['component', 'sqlstate', 'error_class', 'status', 'source_relation']) b,
       unnest(ARRAY['pending', 'review', 'archived', 'any']) s,
       unnest(ARRAY['fc_orders', NULL]) q
 ORDER BY 1, 2, 3;
-- and in count order, then value, then queue
SELECT b AS by,
       bool_and(f.o = f.r) AS in_order
  FROM unnest(ARRAY['component', 'sqlstate', 'error_class', 'status', 'source_relation']) b,
       LATERAL (SELECT o, row_number() OVER (ORDER BY x.count DESC, x.value, x.queue) AS r
                  FROM dlq_facets(NULL, b, 'any') WITH ORDINALITY AS x(queue, value, count, oldest_at, newest_at, o)) f
 GROUP BY b ORDER BY b;

-- Counts by component and sqlstate (and error_class, an INCLUDE column of
-- the sqlstate index) are one pass over an index, index-only; by status,
-- dlq.counts and two probes per state.  These are the statements
-- src/facets.c prepares, planned as it plans them (without the two
-- lookups of stored_at by message_id per part).
CREATE FUNCTION pg_temp.scans(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    found text[] := '{}';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || stmt LOOP
        IF line ~ '(Scan|Seq Scan) ' THEN
            found := found || regexp_replace(substring(line from '((Index Only Scan|Index Scan Backward|Index Scan|Seq Scan)( using [a-z_0-9]+)? on [a-z_0-9]+)'),
                                             'messages_(closed|archive)_[0-9]+', 'messages_\1_N', 'g');
        END IF;
    END LOOP;
    RETURN array_to_string(ARRAY(SELECT DISTINCT unnest(found) ORDER BY 1), E'\n');
END $$;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SET max_parallel_workers_per_gather = 0;
SET jit = off;
SELECT pg_temp.scans($$SELECT g.queue, g.value::pg_catalog.text, g.n
 FROM (SELECT m.queue, m.sqlstate AS value, pg_catalog.count(*) AS n,
        pg_catalog.min(m.message_id) AS first_id, pg_catalog.max(m.message_id) AS last_id
        FROM dlq.messages m WHERE true AND m.queue = 'fc_orders' AND m.status = 'pending'::text::dlq.status
        GROUP BY 1, 2) g ORDER BY g.n DESC, g.value::pg_catalog.text, g.queue$$) AS by_sqlstate;
SELECT pg_temp.scans($$SELECT g.queue, g.value::pg_catalog.text, g.n
 FROM (SELECT m.queue, m.error_class AS value, pg_catalog.count(*) AS n,
        pg_catalog.min(m.message_id) AS first_id, pg_catalog.max(m.message_id) AS last_id
        FROM dlq.messages m WHERE true AND m.queue = 'fc_orders' AND m.status = 'pending'::text::dlq.status
        GROUP BY 1, 2) g$$) AS by_error_class;
SELECT pg_temp.scans($$SELECT g.queue, g.value::pg_catalog.text, g.n
 FROM (SELECT m.queue, m.component AS value, pg_catalog.count(*) AS n,
        pg_catalog.min(m.message_id) AS first_id, pg_catalog.max(m.message_id) AS last_id
        FROM dlq.messages m WHERE true AND m.queue = 'fc_orders' AND m.status = 'pending'::text::dlq.status
        GROUP BY 1, 2) g$$) AS by_component;
RESET enable_seqscan;
RESET enable_bitmapscan;
RESET max_parallel_workers_per_gather;
RESET jit;

-- Bad input: 22023 for a bad value, 22004 for NULL, nothing huge quoted back.
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'payload')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'SQLSTATE')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', '')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', E'sqlstate\n')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', repeat('sqlstate', 100000))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', NULL)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'sqlstate', 'done')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'sqlstate', NULL)$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'sqlstate', repeat('p', 1000000))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('', 'sqlstate')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets(repeat('q', 100000))$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets(E'fc\u0007orders')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets(U&'fc\0085orders')$$);
-- the first bad argument is reported
SELECT dlq_test.err($$SELECT * FROM dlq_facets(repeat('q', 64), 'payload', 'done')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders', 'payload', 'done')$$);

-- Who may call: dlq_reader (and so dlq_operator), not dlq_writer alone,
-- not PUBLIC.
CREATE ROLE fc_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE fc_operator LOGIN IN ROLE dlq_operator;
CREATE ROLE fc_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE fc_nobody LOGIN;
SET ROLE fc_reader;
SELECT value, count FROM dlq_facets('fc_orders', 'component', 'any');
SET ROLE fc_operator;
SELECT value, count FROM dlq_facets('fc_orders', 'error_class', 'any');
SET ROLE fc_writer;
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders')$$);
SET ROLE fc_nobody;
SELECT dlq_test.err($$SELECT * FROM dlq_facets('fc_orders')$$);
RESET ROLE;
SELECT has_function_privilege('public', 'dlq_facets(text, text, text)', 'EXECUTE') AS public_may_call;
DROP ROLE fc_reader;
DROP ROLE fc_operator;
DROP ROLE fc_writer;
DROP ROLE fc_nobody;
