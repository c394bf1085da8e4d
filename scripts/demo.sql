-- The story `make demo` tells: a pipeline fails, dlq keeps every failure,
-- an operator pages through them.
\pset footer off
\set ECHO none

\echo '1. CREATE EXTENSION dlq'
CREATE EXTENSION dlq;

\echo '2. An ETL job fails on three rows and a CDC consumer fails on the same key twice; each failure is kept.'
SELECT dlq_store('orders', '{"id": 7, "amount": -5}', 'new row violates check constraint "amount_positive"',
                 component => 'loader', sqlstate => '23514') AS stored_id
UNION ALL
SELECT dlq_store('orders', '{"id": 8, "customer": 99}', 'insert or update on table "orders" violates foreign key constraint "orders_customer_fkey"',
                 component => 'loader', sqlstate => '23503')
UNION ALL
SELECT dlq_store('orders', '{"id": 9}', 'could not connect to warehouse', component => 'sink', sqlstate => '08006')
UNION ALL
SELECT dlq_store('cdc', '{"lsn": "0/16B3748", "table": "users", "id": 42}', 'timeout writing to search index',
                 component => 'indexer', sqlstate => '57014', dedup_key => 'users:42')
UNION ALL
SELECT dlq_store('cdc', '{"lsn": "0/16B3790", "table": "users", "id": 42}', 'timeout writing to search index (again)',
                 component => 'indexer', sqlstate => '57014', dedup_key => 'users:42');

\echo '3. What is in the DLQ (the repeated CDC failure is one message with two occurrences):'
SELECT message_id, queue, component, sqlstate, error_class, occurrences, left(error, 50) AS error
  FROM dlq_list(batch_size => 100) ORDER BY message_id;

\echo '4. Paging through queue "orders" two at a time with a keyset cursor:'
SELECT dlq_list_page('orders', batch_size => 2) AS page \gset
SELECT jsonb_path_query_array(:'page'::jsonb, '$.messages[*].message_id') AS ids,
       (:'page'::jsonb)->'next_cursor' AS next_cursor, (:'page'::jsonb)->'has_more' AS has_more;
SELECT dlq_list_page('orders', cursor => ((:'page'::jsonb)->>'next_cursor')::bigint, batch_size => 2) AS page \gset
SELECT jsonb_path_query_array(:'page'::jsonb, '$.messages[*].message_id') AS ids,
       (:'page'::jsonb)->'next_cursor' AS next_cursor, (:'page'::jsonb)->'has_more' AS has_more;

\echo '5. One message in full:'
\x on
SELECT message_id, queue, status, payload, error, sqlstate, error_class, occurrences, attempts, max_attempts,
       stored_at::timestamp(0) AS stored_at, expires_at::timestamp(0) AS expires_at
  FROM dlq_get((SELECT min(message_id) FROM dlq.messages WHERE queue = 'cdc'));
\x off

\echo '6. Bad input is refused with a clear error and changes nothing:'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT dlq_store('orders', '{}', 'e', sqlstate => 'oops');
SELECT * FROM dlq_list(batch_size => 5000);
\set VERBOSITY default
\set ON_ERROR_STOP 1
SELECT count(*) AS messages_in_dlq FROM dlq.messages;
