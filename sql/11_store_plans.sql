-- dlq_store picks one of two plans per call (src/store.c): a fast one for
-- queues without auto_retry and a full one that also sets next_retry_at.
-- Whatever the order of queues and settings in one session, every message
-- gets the next_retry_at its queue's settings call for.
\set VERBOSITY default

-- sp_gap: the delay before the first retry of a message, or "none";
-- retry_base is 10 min and the jitter +-10%, so it is "about 10 min".
CREATE FUNCTION sp_gap(id bigint) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN next_retry_at IS NULL THEN 'none'
                WHEN next_retry_at - stored_at BETWEEN '9 min' AND '11 min' THEN 'about 10 min'
                ELSE 'wrong: ' || (next_retry_at - stored_at)::text END
      FROM dlq.messages WHERE message_id = id
$$;

-- A new queue is created without auto_retry.
SELECT sp_gap(dlq_store('sp_plain', '{"n": 1}', 'e'));
SELECT sp_gap(dlq_store('sp_plain', '{"n": 2}', 'e'));

-- An auto_retry queue (set directly: dlq_configure comes with the replay issue);
-- retry_on 'all' retries the messages stored without a SQLSTATE (permanent).
SELECT dlq_store('sp_retry', '{"n": 0}', 'creates the queue') IS NOT NULL AS created;
UPDATE dlq.queues SET auto_retry = true, retry_on = 'all', retry_base = '10 min' WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 1}', 'e'));
SELECT sp_gap(dlq_store('sp_retry', '{"n": 2}', 'e'));
-- Interleaved with a queue without it.
SELECT sp_gap(dlq_store('sp_plain', '{"n": 3}', 'e'));
SELECT sp_gap(dlq_store('sp_retry', '{"n": 3}', 'e'));

-- dedup_key on an auto_retry queue: the folded failure keeps the first due time.
SELECT dlq_store('sp_retry', '{"n": 4}', 'first', dedup_key => 'k') AS dedup_id \gset
SELECT next_retry_at AS due FROM dlq.messages WHERE message_id = :dedup_id \gset
SELECT sp_gap(:dedup_id);
SELECT dlq_store('sp_retry', '{"n": 4}', 'second', dedup_key => 'k') = :dedup_id AS same_id;
SELECT occurrences, error, next_retry_at = :'due' AS same_due FROM dlq.messages WHERE message_id = :dedup_id;

-- auto_retry switched off, then on again, between calls of this session.
UPDATE dlq.queues SET auto_retry = false WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 5}', 'e'));
SELECT sp_gap(dlq_store('sp_retry', '{"n": 6}', 'e', dedup_key => 'other'));
UPDATE dlq.queues SET auto_retry = true WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 7}', 'e'));
SELECT sp_gap(dlq_store('sp_retry', '{"n": 8}', 'e', dedup_key => 'third'));
UPDATE dlq.queues SET auto_retry = false WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 9}', 'e', dedup_key => 'k')) AS folded_keeps_its_due;
SELECT sp_gap(dlq_store('sp_retry', '{"n": 10}', 'e'));

-- A queue removed and recreated by dlq_store gets the defaults again.
UPDATE dlq.queues SET auto_retry = true WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 11}', 'e'));
DELETE FROM dlq.messages WHERE queue = 'sp_retry';
DELETE FROM dlq.queues WHERE queue = 'sp_retry';
SELECT sp_gap(dlq_store('sp_retry', '{"n": 12}', 'e'));
SELECT auto_retry FROM dlq.queues WHERE queue = 'sp_retry';

-- Every message of this test, in order.
SELECT queue, payload->>'n' AS n, occurrences, sp_gap(message_id)
  FROM dlq.messages WHERE queue LIKE 'sp\_%' ORDER BY message_id;

DROP FUNCTION sp_gap(bigint);
DELETE FROM dlq.messages WHERE queue LIKE 'sp\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sp\_%';
