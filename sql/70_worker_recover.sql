-- dlq.worker_recover, the worker's step that returns abandoned replays: a
-- message whose dedup_key is meanwhile held by another open message is
-- folded into it instead of breaking the unique index (and the batch).
-- Claims expired 2 minutes ago: past the 1 minute passed here, within the
-- running worker's dlq.replay_timeout (5 minutes), so the worker leaves
-- them to this file.  Each call names its queue: replays other files left
-- claimed may be more than a minute old by now on a slow machine.
SELECT (dlq_configure('w_fold', require_listener => false)).queue AS configured;
SELECT dlq_store('w_fold', '{"n": 1}', 'first', dedup_key => 'k') AS a \gset
UPDATE dlq.messages SET status = 'replaying', attempts = 1, claim_expires_at = now() - interval '2 minutes'
 WHERE message_id = :a;
SELECT dlq_store('w_fold', '{"n": 2}', 'while replaying', dedup_key => 'k') AS b \gset
SELECT :a <> :b AS new_open_message;
SELECT dlq.worker_recover(100, '1 minute', 'tester', queue => 'w_fold') AS recovered;
SELECT message_id = :a AS is_a, status, occurrences FROM dlq.messages WHERE queue = 'w_fold' ORDER BY message_id;
SELECT kind, message_count, detail->>'into' = :'b' AS into_b FROM dlq.events
 WHERE queue = 'w_fold' AND kind = 'merged';

-- Two abandoned replays with the same key and no open message: the first
-- reopens, the second folds into it.
SELECT dlq_store('w_fold2', '{"n": 1}', 'one', dedup_key => 'k') AS c \gset
UPDATE dlq.messages SET status = 'replaying', claim_expires_at = now() - interval '2 minutes' WHERE message_id = :c;
SELECT dlq_store('w_fold2', '{"n": 2}', 'two', dedup_key => 'k') AS d \gset
UPDATE dlq.messages SET status = 'replaying', claim_expires_at = now() - interval '2 minutes' WHERE message_id = :d;
SELECT dlq.worker_recover(100, '1 minute', 'tester', queue => 'w_fold2') AS recovered;
SELECT message_id = :c AS is_c, status, occurrences FROM dlq.messages WHERE queue = 'w_fold2' ORDER BY message_id;

-- Without a dedup_key: back to pending, or review at max_attempts.
SELECT dlq_store('w_plain', '{}', 'x') AS e \gset
SELECT dlq_store('w_plain', '{}', 'y') AS f \gset
UPDATE dlq.messages SET status = 'replaying', claim_expires_at = now() - interval '2 minutes',
       attempts = CASE WHEN message_id = :f THEN max_attempts ELSE 1 END
 WHERE message_id IN (:e, :f);
SELECT dlq.worker_recover(100, '1 minute', 'tester', queue => 'w_plain') AS recovered;
SELECT message_id = :e AS is_e, status, claim_expires_at IS NULL AS unclaimed FROM dlq.messages
 WHERE queue = 'w_plain' ORDER BY message_id;
