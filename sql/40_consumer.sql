-- Replay lifecycle, consumer side: dlq_listen, dlq_claim, dlq_ack, dlq_nack.
\set VERBOSITY default

-- dlq_listen creates a new queue and returns its channel.
SELECT dlq_listen('cs_new');
SELECT queue, channel FROM dlq.queues WHERE queue = 'cs_new';
UNLISTEN *;
-- The registration is a session lock; it goes with a rolled back LISTEN.
CREATE FUNCTION pg_temp.registrations() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
$$;
SELECT pg_temp.registrations() AS after_commit;
BEGIN;
SELECT dlq_listen('cs_rb');
ROLLBACK;
SELECT pg_temp.registrations() AS after_rollback;
BEGIN;
SAVEPOINT s;
SELECT dlq_listen('cs_rb');
ROLLBACK TO s;
SAVEPOINT t;
SELECT dlq_listen('cs_rb2');
RELEASE t;
COMMIT;
SELECT pg_temp.registrations() AS after_savepoints;
-- Registering twice holds one registration; a rollback then keeps it.
BEGIN;
SELECT dlq_listen('cs_rb2');
ROLLBACK;
SELECT pg_temp.registrations() AS still_registered;
UNLISTEN *;
SELECT dlq_test.try($$SELECT dlq_listen(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_listen(repeat('x', 64))$$);

SELECT (dlq_configure('cs_a', require_listener => false, max_attempts => 2)).queue;
SELECT dlq_store('cs_a', jsonb_build_object('n', g), 'e' || g) IS NOT NULL FROM generate_series(1, 5) g;

-- Only replaying messages are claimable.
SELECT count(*) AS nothing_to_claim FROM dlq_claim('cs_a');
SELECT dlq_reprocess_all('cs_a') ->> 'replayed' AS replayed;

-- A claim leases a batch in id order; claims add no attempts.
SELECT payload->>'n' AS n, status, attempts, claimed_by LIKE current_user || '/%' AS mine,
       claim_expires_at > now() + interval '4 min' AS leased
  FROM dlq_claim('cs_a', 2);
SELECT payload->>'n' AS n FROM dlq_claim('cs_a', 10, '1 min');
SELECT count(*) AS all_leased FROM dlq_claim('cs_a');

-- An expired lease makes the message claimable again, attempts unchanged.
UPDATE dlq.messages SET claim_expires_at = now() - interval '1 s'
 WHERE message_id = dlq_test.id('cs_a', 1);
SELECT payload->>'n' AS n, attempts FROM dlq_claim('cs_a');
SELECT dlq_test.st('cs_a');

-- Ack resolves replaying messages; others are not counted.
SELECT dlq_ack(ARRAY[dlq_test.id('cs_a', 1), dlq_test.id('cs_a', 2), -1]) AS acked;
SELECT dlq_ack(ARRAY[dlq_test.id('cs_a', 1)]) AS acked_again;
SELECT payload->>'n' AS n, status, resolved_at IS NOT NULL AS resolved_at, claimed_by, claim_expires_at
  FROM dlq.messages WHERE queue = 'cs_a' AND status = 'resolved' ORDER BY message_id;
SELECT kind, message_count, message_ids = ARRAY[dlq_test.id('cs_a', 1), dlq_test.id('cs_a', 2)] AS ids
  FROM dlq.events WHERE queue = 'cs_a' AND kind = 'acked';

-- Nack: error recorded, back to pending while attempts remain, no attempt added.
SELECT dlq_nack(dlq_test.id('cs_a', 3), 'downstream timeout', '57014');
SELECT payload->>'n' AS n, status, attempts, error, sqlstate, error_class, claimed_by, next_retry_at
  FROM dlq.messages WHERE message_id = dlq_test.id('cs_a', 3);
-- retry_in sets next_retry_at.
SELECT dlq_nack(dlq_test.id('cs_a', 4), 'later', retry_in => '10 min');
SELECT next_retry_at BETWEEN now() + interval '9 min' AND now() + interval '11 min' AS in_ten_minutes
  FROM dlq.messages WHERE message_id = dlq_test.id('cs_a', 4);
-- Second replay, second nack: max_attempts reached, review.
SELECT dlq_reprocess(ARRAY[dlq_test.id('cs_a', 3)]) ->> 'replayed' AS replayed;
SELECT dlq_nack(dlq_test.id('cs_a', 3), 'still failing');
SELECT dlq_test.st('cs_a');
-- (1.1: each also records the attempt it ended, for dlq_history)
SELECT kind, message_ids = ARRAY[dlq_test.id('cs_a', 3)] AS ids, detail - 'attempts' AS detail,
       (detail->'attempts'->0->>'message_id')::bigint = dlq_test.id('cs_a', 3) AS attempt_of_it,
       (detail->'attempts'->0) - 'message_id' AS attempt
  FROM dlq.events
 WHERE queue = 'cs_a' AND kind = 'nacked' AND message_ids = ARRAY[dlq_test.id('cs_a', 3)] ORDER BY event_id;

-- Bad input, wrong state, unknown message: errors, nothing changes.
SELECT regexp_replace(dlq_test.try(format('SELECT dlq_nack(%s, %L)', dlq_test.id('cs_a', 3), 'x')),
                      'message \d+', 'message N') AS err;
SELECT dlq_test.try($$SELECT dlq_nack(-1, 'x')$$);
SELECT dlq_test.try($$SELECT dlq_nack(NULL, 'x')$$);
SELECT dlq_test.try(format('SELECT dlq_nack(%s, NULL)', dlq_test.id('cs_a', 5)));
SELECT dlq_test.try(format('SELECT dlq_nack(%s, %L)', dlq_test.id('cs_a', 5), ''));
SELECT dlq_test.try(format('SELECT dlq_nack(%s, %L, %L)', dlq_test.id('cs_a', 5), 'x', 'bad'));
SELECT dlq_test.try(format('SELECT dlq_nack(%s, %L, retry_in => %L)', dlq_test.id('cs_a', 5), 'x', '-1 min'));
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_nope')$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim(NULL)$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a', 0)$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a', 1001)$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a', NULL)$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a', 1, '0')$$);
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a', 1, NULL)$$);
SELECT dlq_test.try($$SELECT dlq_ack(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_ack('{}')$$);
SELECT dlq_test.try($$SELECT dlq_ack(ARRAY[NULL]::bigint[])$$);
SELECT dlq_test.st('cs_a');

-- auto_retry queues back off with dlq.retry_delay on a nack without retry_in.
SELECT (dlq_configure('cs_b', require_listener => false, auto_retry => true,
                      retry_base => '1 hour', retry_max => '10 hours')).queue;
SELECT dlq_store('cs_b', '{"n": 1}', 'e') IS NOT NULL;
SELECT dlq_reprocess_all('cs_b') ->> 'replayed' AS replayed;
SELECT next_retry_at IS NULL AS no_retry_while_replaying FROM dlq.messages WHERE queue = 'cs_b';
SELECT dlq_nack(dlq_test.id('cs_b', 1), 'e2');
SELECT next_retry_at BETWEEN now() + interval '1.7 hours' AND now() + interval '2.3 hours' AS second_retry_backs_off
  FROM dlq.messages WHERE queue = 'cs_b';

-- dedup_key: a nacked message whose key is meanwhile held by a new open
-- message is folded into it (occurrences added) and resolved as merged.
SELECT (dlq_configure('cs_c', require_listener => false)).queue;
SELECT dlq_store('cs_c', '{"n": 1}', 'first', dedup_key => 'k1') IS NOT NULL;
SELECT dlq_reprocess_all('cs_c') ->> 'replayed' AS replayed;
SELECT dlq_store('cs_c', '{"n": 2}', 'while replaying', dedup_key => 'k1') IS NOT NULL;
SELECT dlq_store('cs_c', '{"n": 2}', 'again', dedup_key => 'k1') IS NOT NULL;
SELECT dlq_nack(dlq_test.id('cs_c', 1), 'consumer failed', '23505');
SELECT payload->>'n' AS n, status, occurrences, error, sqlstate FROM dlq.messages WHERE queue = 'cs_c' ORDER BY message_id;
SELECT kind, detail->>'into' = dlq_test.id('cs_c', 2)::text AS into_open_one
  FROM dlq.events WHERE queue = 'cs_c' AND kind IN ('nacked', 'merged') ORDER BY event_id;
-- Without a competing open message the key comes back to pending as usual.
SELECT dlq_reprocess_all('cs_c') ->> 'replayed' AS replayed;
SELECT dlq_nack(dlq_test.id('cs_c', 2), 'failed again');
SELECT payload->>'n' AS n, status, occurrences FROM dlq.messages WHERE queue = 'cs_c' ORDER BY message_id;

-- Consumers need dlq_operator.
CREATE ROLE cs_reader IN ROLE dlq_reader;
SET ROLE cs_reader;
SELECT dlq_test.try($$SELECT * FROM dlq_claim('cs_a')$$);
SELECT dlq_test.try($$SELECT dlq_listen('cs_a')$$);
RESET ROLE;
DROP ROLE cs_reader;

-- Every action of this test left events naming the role and a request id.
SELECT count(*) AS events, count(*) FILTER (WHERE request_id IS NULL OR actor IS NULL) AS without_request
  FROM dlq.events WHERE queue LIKE 'cs\_%';
