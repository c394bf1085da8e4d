-- dlq_store: keeping failed messages, deduplication, and every bad input.
\set VERBOSITY default

-- A first message creates its queue with default settings.
SELECT dlq_store('orders', '{"id": 1}', 'duplicate key value violates unique constraint "orders_pkey"',
                 component => 'loader', sqlstate => '23505',
                 error_detail => '{"constraint": "orders_pkey"}', metadata => '{"batch": 7}') AS first_id;
SELECT queue, paused, max_attempts, retention, resolved_retention, channel, require_listener
  FROM dlq.queues;
SELECT message_id, queue, component, status, payload, error, sqlstate, error_class, error_detail,
       metadata, occurrences, attempts, max_attempts, expires_at - stored_at AS lifetime
  FROM dlq.messages;

-- Error class follows the SQLSTATE.
SELECT dlq_store('orders', '{"id": 2}', 'connection lost', sqlstate => '08006') IS NOT NULL;
SELECT dlq_store('orders', '{"id": 3}', 'deadlock', sqlstate => '40P01') IS NOT NULL;
SELECT dlq_store('orders', '{"id": 4}', 'lock timeout', sqlstate => '55P03') IS NOT NULL;
SELECT dlq_store('orders', '{"id": 5}', 'other lock state', sqlstate => '55000') IS NOT NULL;
SELECT dlq_store('orders', '{"id": 6}', 'no sqlstate') IS NOT NULL;
SELECT payload->>'id' AS id, sqlstate, error_class FROM dlq.messages ORDER BY message_id;

-- dedup_key folds repeated failures into one open message.
SELECT dlq_store('cdc', '{"k": 1}', 'first failure', dedup_key => 'row-1') AS dedup_id \gset
SELECT dlq_store('cdc', '{"k": 1}', 'second failure', sqlstate => '40001', dedup_key => 'row-1') = :dedup_id AS same_id;
SELECT dlq_store('cdc', '{"k": 1}', 'third failure', dedup_key => 'row-1') = :dedup_id AS same_id;
SELECT dlq_store('cdc', '{"k": 2}', 'other key', dedup_key => 'row-2') <> :dedup_id AS new_id;
SELECT dedup_key, occurrences, error, payload, last_failed_at >= stored_at AS later
  FROM dlq.messages WHERE queue = 'cdc' ORDER BY message_id;
-- The same key in another queue is another message.
SELECT dlq_store('cdc2', '{"k": 1}', 'elsewhere', dedup_key => 'row-1') <> :dedup_id AS other_queue;
-- A closed message does not absorb new failures: a new one is opened.
UPDATE dlq.messages SET status = 'resolved' WHERE message_id = :dedup_id;
SELECT dlq_store('cdc', '{"k": 1}', 'after resolve', dedup_key => 'row-1') <> :dedup_id AS reopened;
SELECT count(*) FROM dlq.messages WHERE queue = 'cdc' AND dedup_key = 'row-1';

-- Names: 63 bytes is fine, multibyte counted in bytes.
SELECT dlq_store(repeat('q', 63), '{}', 'ok') IS NOT NULL AS long_name_ok;
SELECT channel FROM dlq.queues WHERE queue = repeat('q', 63);

-- Bad input: a clear error, and nothing stored.
SELECT count(*) AS before FROM dlq.messages \gset
SELECT dlq_test.err($$SELECT dlq_store(NULL, '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store('', '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store(repeat('q', 64), '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store(repeat('é', 32), '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store(E'bad\nname', '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store(E'tab\tname', '{}', 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', NULL, 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', NULL)$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', '')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', component => '')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', component => E'c\x01')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', sqlstate => '2350')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', sqlstate => '235050')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', sqlstate => '23s05')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', sqlstate => '')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', error_detail => '[1, 2]')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', metadata => '"text"')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', dedup_key => '')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', 'e', dedup_key => repeat('k', 513))$$);
SET dlq.max_payload_bytes = '2kB';
SELECT dlq_test.err($$SELECT dlq_store('q', jsonb_build_object('blob', repeat('x', 3000)), 'e')$$);
SELECT dlq_test.err($$SELECT dlq_store('q', '{}', repeat('e', 3000))$$);
SELECT count(*) - :before AS stored_by_bad_calls FROM dlq.messages;
SELECT count(*) AS queues_created_by_bad_calls FROM dlq.queues WHERE queue = 'q';
SELECT dlq_store('q', jsonb_build_object('blob', repeat('x', 1000)), 'e') IS NOT NULL AS small_ok;
RESET dlq.max_payload_bytes;

-- Storage is not writable or readable by PUBLIC.
SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants
 WHERE table_schema = 'dlq' AND grantee <> current_user ORDER BY 1, 2, 3;
