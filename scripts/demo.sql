-- The story `make demo` tells: a pipeline fails, dlq keeps every failure
-- with its context, a load diverts its bad rows instead of aborting, an
-- operator fixes the cause and replays, consumers take the rest, and
-- etl_status says how healthy it all is.
\pset footer off
\set ECHO none
\set QUIET on

\echo '1. CREATE EXTENSION dlq'
CREATE EXTENSION dlq;

\echo
\echo '2. An application handler fails on three payments, and a CDC consumer fails twice on the same row;'
\echo '   each failure is kept with its error context (the repeated one as one message, two occurrences).'
SELECT dlq_store('payments', '{"payment": 7, "amount": -5}', 'amount must be positive',
                 component => 'validator', sqlstate => '22023') AS stored_id
UNION ALL
SELECT dlq_store('payments', '{"payment": 8}', 'card processor unreachable', component => 'gateway', sqlstate => '08006')
UNION ALL
SELECT dlq_store('payments', '{"payment": 9}', 'card processor timed out', component => 'gateway', sqlstate => '57014')
UNION ALL
SELECT dlq_store('cdc', '{"lsn": "0/16B3748", "table": "users", "id": 42}', 'timeout writing to search index',
                 component => 'indexer', sqlstate => '57014', dedup_key => 'users:42')
UNION ALL
SELECT dlq_store('cdc', '{"lsn": "0/16B3790", "table": "users", "id": 42}', 'timeout writing to search index (again)',
                 component => 'indexer', sqlstate => '57014', dedup_key => 'users:42');
SELECT message_id, queue, component, sqlstate, error_class, occurrences, error
  FROM dlq_list(batch_size => 100) ORDER BY message_id;

\echo
\echo '3. Paging through queue "payments" two at a time with a keyset cursor:'
SELECT dlq_list_page('payments', batch_size => 2) AS page \gset
SELECT jsonb_path_query_array(:'page'::jsonb, '$.messages[*].message_id') AS ids,
       (:'page'::jsonb)->'next_cursor' AS next_cursor, (:'page'::jsonb)->'has_more' AS has_more;
SELECT dlq_list_page('payments', cursor => ((:'page'::jsonb)->>'next_cursor')::bigint, batch_size => 2) AS page \gset
SELECT jsonb_path_query_array(:'page'::jsonb, '$.messages[*].message_id') AS ids,
       (:'page'::jsonb)->'next_cursor' AS next_cursor, (:'page'::jsonb)->'has_more' AS has_more;

\echo
\echo '4. Bad input is refused with a clear error and a deliberate SQLSTATE, and changes nothing:'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT dlq_store('payments', '{}', 'e', sqlstate => 'oops');
SELECT * FROM dlq_list(batch_size => 5000);
\set VERBOSITY default
\set ON_ERROR_STOP 1

\echo
\echo '5. An ETL load: dlq_attach(''orders'') diverts rows that would break a constraint into queue "orders".'
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers VALUES (1), (2);
CREATE TABLE orders (
    id    int PRIMARY KEY,
    cid   int NOT NULL REFERENCES customers,
    qty   int CHECK (qty > 0),
    note  text
);
SELECT dlq_attach('orders') AS queue;
\echo '   COPY orders FROM stdin: 6 rows, 4 of them bad. The COPY does not abort:'
COPY orders FROM stdin WITH (FORMAT csv);
1,1,5,ok
2,3,1,customer 3 is not loaded yet
3,1,0,zero quantity
1,2,4,duplicate id
4,,1,no customer
5,2,2,ok
\.
SELECT count(*) AS rows_loaded FROM orders;
\echo '   Each diverted row keeps its error and the line of the COPY input it came from:'
SELECT message_id, metadata->>'copy_line' AS line, sqlstate, error, error_detail->>'detail' AS detail
  FROM dlq_list('orders') ORDER BY message_id;

\echo '   Triage: where the failures are, by SQLSTATE (dlq_facets):'
SELECT value AS sqlstate, count FROM dlq_facets('orders');
\echo '   A load that is mostly garbage should stop, not fill the DLQ: a reject limit of 2 bad rows per'
\echo '   statement (dlq_attach again, max_errors => 2). This COPY fails at its third bad row, SQLSTATE DLQ02,'
\echo '   and keeps nothing, neither rows nor messages:'
SELECT dlq_attach('orders', max_errors => 2) AS queue;
\set ON_ERROR_STOP 0
COPY orders FROM stdin WITH (FORMAT csv);
10,1,1,ok
11,9,1,no such customer
12,1,-1,negative
13,1,0,zero
14,1,1,never read
\.
\set ON_ERROR_STOP 1
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate, count(*) AS rows_loaded,
       (SELECT count(*) FROM dlq_list('orders')) AS messages FROM orders;
SELECT dlq_attach('orders') AS "queue (limit removed)";

\echo
\echo '6. The missing customer arrives; replay the queue into the table with the operator''s privileges.'
\echo '   The row whose cause is fixed lands; the others record their new error and attempt:'
INSERT INTO customers VALUES (3);
SELECT jsonb_pretty(dlq_reprocess_all('orders') - 'request_id' - 'failures') AS summary;
SELECT count(*) AS rows_in_orders FROM orders;
SELECT message_id, status, attempts, sqlstate FROM dlq_list('orders', status => 'any') ORDER BY message_id;
\echo '   Each failed attempt keeps its error (dlq_history of the first message still pending):'
SELECT kind, attempt, sqlstate, left(error, 60) AS error
  FROM dlq_history((SELECT min(message_id) FROM dlq_list('orders')))
 WHERE attempt IS NOT NULL;

\echo
\echo '7. A consumer: dlq_listen registers it; dlq_reprocess_all sends ONE notification for the whole batch;'
\echo '   the consumer claims, acks what worked and nacks what did not.'
SELECT dlq_listen('payments') AS channel;
SELECT dlq_reprocess_all('payments') - 'request_id' - 'failures' AS summary;
SELECT 1 AS "(the notification arrives with the next command)";
SELECT message_id, payload, claimed_by IS NOT NULL AS claimed FROM dlq_claim('payments', 10) ORDER BY message_id;
SELECT dlq_ack(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'payments' AND component = 'gateway')) AS acked;
SELECT dlq_nack(min(message_id), 'still negative', sqlstate => '22023') AS nacked_to
  FROM dlq.messages WHERE queue = 'payments' AND status = 'replaying';
SELECT message_id, status, attempts, error FROM dlq_list('payments', status => 'any') ORDER BY message_id;

\echo
\echo '8. Processing inside the database: queue "invoices" replays through a handler function. Returning'
\echo '   resolves a message; an error fails only that message, and what the handler wrote for it is undone.'
CREATE TABLE invoices_booked (id int PRIMARY KEY, amount numeric);
CREATE FUNCTION book_invoice(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO invoices_booked VALUES ((p->>'id')::int, (p->>'amount')::numeric);
    IF (p->>'amount')::numeric <= 0 THEN
        RAISE EXCEPTION 'invoice % has amount %', p->>'id', p->>'amount' USING ERRCODE = '22023';
    END IF;
END $$;
SELECT (dlq_configure('invoices', replay_handler => 'book_invoice(jsonb)')).replay_handler;
SELECT count(dlq_store('invoices', jsonb_build_object('id', i, 'amount', CASE WHEN i = 3 THEN -5 ELSE 10 * i END),
                       'ledger was down')) AS stored
  FROM generate_series(1, 5) i;
SELECT dlq_reprocess_all('invoices') - 'request_id' - 'failures' AS summary;
SELECT (SELECT count(*) FROM invoices_booked) AS booked,
       string_agg(format('%s: %s (%s)', message_id, status, error), '; ') AS still_open
  FROM dlq_list('invoices');
\echo '   The operator corrects the invoice (dlq_edit), and a redrive task lets the worker replay the queue'
\echo '   at 2 messages a second, as the role that started it:'
SELECT status, payload FROM dlq_edit((SELECT min(message_id) FROM dlq_list('invoices')),
                                     '{"id": 3, "amount": 30}', 'sign error in the source system');
SELECT dlq_redrive_start('invoices', 2, reason => 'invoice 3 corrected') AS task \gset
DO $$
BEGIN
    FOR i IN 1..150 LOOP
        EXIT WHEN (SELECT state <> 'running' FROM dlq.redrive_tasks
                    WHERE task_id = (SELECT max(task_id) FROM dlq.redrive_tasks));
        PERFORM pg_sleep(0.2);
    END LOOP;
END $$;
SELECT s->>'state' AS state, s->>'moved' AS moved, s->>'failed' AS failed,
       (SELECT count(*) FROM invoices_booked) AS booked
  FROM dlq_redrive_status(:task) s;

\echo
\echo '9. Pipeline health at a glance (after waiting up to 20 s for the background worker to notice'
\echo '   the new extension; it expires, purges, recovers stuck replays, retries and raises alerts):'
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN coalesce((SELECT running FROM dlq.worker_status()), false);
        PERFORM pg_sleep(0.2);
    END LOOP;
END $$;
SELECT name, health, lag, pending, replaying, resolved, review, worker FROM etl_status() ORDER BY name;
SELECT etl_status_json()->>'health' AS overall_health;

\echo
\echo '10. The audit trail: who did what'
SELECT kind, queue, actor, message_count FROM dlq.events ORDER BY event_id;
