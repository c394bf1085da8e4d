-- dlq_move and dlq_move_all (issue 13): redrive open messages to another
-- queue.  What moves and what stays (replaying, closed, dedup_key
-- conflicts, what the target would refuse), what is reset, the audit on
-- both queues, filters and dry_run, bad arguments, and the trust model:
-- a captured row never reaches another table through a move.
\set VERBOSITY default
SET client_min_messages = warning;
SET TIME ZONE 'UTC';

CREATE ROLE move_op IN ROLE dlq_operator;

-- move_state(q): every message of a queue as n:status:attempts/max_attempts.
CREATE FUNCTION dlq_test.move_state(q text) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(format('%s:%s:%s/%s', payload->>'n', status, attempts, max_attempts),
                               ' ' ORDER BY message_id), '(none)')
      FROM dlq.messages WHERE queue = q
$$;
CREATE FUNCTION dlq_test.move_id(n int) RETURNS bigint LANGUAGE sql AS $$
    SELECT message_id FROM dlq.messages WHERE payload->>'n' = n::text AND queue LIKE 'move\_%'
$$;

SELECT queue FROM dlq_configure('move_a', require_listener => false, max_attempts => 5);
SELECT queue FROM dlq_configure('move_b', require_listener => false, max_attempts => 2,
                                retention => '2 days');
-- move_a: 1 pending; 2 pending with dedup_key k1; 3 replaying; 4 review
-- after 5 attempts; 5 resolved; 6 review after 1 attempt.
SELECT dlq_store('move_a', jsonb_build_object('n', n), 'failed ' || n, 'api', '23505',
                 dedup_key => CASE n WHEN 2 THEN 'k1' END) > 0
  FROM generate_series(1, 6) n;
SELECT dlq_reprocess(ARRAY[dlq_test.move_id(3)])->>'replayed' AS replaying;
UPDATE dlq.messages SET status = 'review', attempts = 5, next_retry_at = now(),
       replay_request_id = gen_random_uuid()
 WHERE message_id = dlq_test.move_id(4);
SELECT dlq_resolve(ARRAY[dlq_test.move_id(5)])->>'resolved' AS resolved;
UPDATE dlq.messages SET status = 'review', attempts = 1 WHERE message_id = dlq_test.move_id(6);
-- move_b: 7 pending with dedup_key k1.
SELECT dlq_store('move_b', '{"n": 7}', 'failed 7', dedup_key => 'k1') > 0;
SELECT dlq_test.move_state('move_a') AS move_a, dlq_test.move_state('move_b') AS move_b;

-- ---------------------------------------------------------------------------
-- Bad arguments: nothing moves.
-- ---------------------------------------------------------------------------
SELECT dlq_test.err($$SELECT dlq_move(NULL, 'move_b')$$);
SELECT dlq_test.err($$SELECT dlq_move('{}', 'move_b')$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1, NULL], 'move_b')$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1], NULL)$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1], '')$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1], E'move\u0001')$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1], 'move_nope')$$);
SET dlq.max_ids_per_call = 2;
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1, 2, 3], 'move_b')$$);
RESET dlq.max_ids_per_call;
SELECT dlq_test.err($$SELECT dlq_move_all(NULL, 'move_b')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', NULL)$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_a')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_nope', 'move_b')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_nope', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', max_messages => 0)$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', sqlstate => '235')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', error_class => 'bad')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', since => '2026-01-02', until => '2026-01-01 23:59:59')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', component => repeat('c', 64))$$);
SELECT dlq_test.err($$SELECT dlq_move_all('move_a', 'move_b', dry_run => NULL)$$);
SELECT dlq_test.move_state('move_a') AS move_a, dlq_test.move_state('move_b') AS move_b;
SELECT count(*) AS moved_events FROM dlq.events WHERE kind = 'moved';

-- ---------------------------------------------------------------------------
-- dlq_move by id.
-- ---------------------------------------------------------------------------
SET ROLE move_op;
SELECT r - 'request_id' AS summary
  FROM dlq_move(ARRAY[dlq_test.move_id(1), dlq_test.move_id(2), dlq_test.move_id(3),
                      dlq_test.move_id(4), dlq_test.move_id(5), dlq_test.move_id(6),
                      dlq_test.move_id(7), -1], 'move_b') r;
RESET ROLE;
-- 1 and 6 are pending in move_b, 4 (5 attempts, move_b allows 2) in
-- review; 2 (its key is held by 7), 3 (replaying) and 5 (resolved) stay.
SELECT dlq_test.move_state('move_a') AS move_a, dlq_test.move_state('move_b') AS move_b;
-- Reset on the moved ones: the target's max_attempts and retention, no
-- retry time, no replay request; payload, error, attempts kept.
SELECT payload->>'n' AS n, queue, status, attempts, max_attempts, component, sqlstate, error,
       expires_at BETWEEN now() + interval '2 days' - interval '1 minute' AND now() + interval '2 days' AS target_retention,
       next_retry_at, replay_request_id, claimed_by
  FROM dlq.messages WHERE message_id IN (dlq_test.move_id(1), dlq_test.move_id(4), dlq_test.move_id(6))
 ORDER BY message_id;
-- One event on each queue, by the operator, with the ids.
SELECT e.queue, e.kind, e.actor, e.message_count,
       e.message_ids = ARRAY[dlq_test.move_id(1), dlq_test.move_id(4), dlq_test.move_id(6)] AS ids,
       e.detail
  FROM dlq.events e WHERE e.kind = 'moved' ORDER BY e.event_id;
SELECT count(DISTINCT request_id) AS one_request FROM dlq.events WHERE kind = 'moved';
SELECT kind, queue FROM dlq_history(dlq_test.move_id(1)) ORDER BY event_id;
-- Counts follow the messages (etl_status reads dlq.counts).
SELECT name, pending, replaying, review, resolved FROM etl_status() WHERE name IN ('move_a', 'move_b') ORDER BY name;
-- The moved ones are replayed from their new queue.
SELECT r->>'replayed' AS replayed FROM dlq_reprocess_all('move_b') r;
SELECT dlq_test.move_state('move_b') AS move_b;

-- Two messages with one dedup_key from two queues: the first moves, the
-- second is a conflict and stays.
SELECT queue FROM dlq_configure('move_c', require_listener => false);
SELECT dlq_store('move_a', '{"n": 8}', 'failed 8', dedup_key => 'k2') > 0,
       dlq_store('move_b', '{"n": 9}', 'failed 9', dedup_key => 'k2') > 0;
SELECT r - 'request_id' AS same_key
  FROM dlq_move(ARRAY[dlq_test.move_id(8), dlq_test.move_id(9)], 'move_c') r;
SELECT dlq_test.move_state('move_c') AS move_c,
       (SELECT queue FROM dlq.messages WHERE message_id = dlq_test.move_id(9)) AS n9_queue;
-- A key that is free in the target moves: 2 (k1) into move_c.
SELECT r - 'request_id' AS free_key FROM dlq_move(ARRAY[dlq_test.move_id(2)], 'move_c') r;
SELECT dlq_test.move_state('move_c') AS move_c;

-- A paused target or source does not stop a move (a move replays nothing).
SELECT dlq_pause('move_c');
SELECT r - 'request_id' AS into_paused FROM dlq_move(ARRAY[dlq_test.move_id(9)], 'move_a') r;
SELECT dlq_pause('move_a');
SELECT r - 'request_id' AS from_paused FROM dlq_move(ARRAY[dlq_test.move_id(8)], 'move_b') r;
SELECT dlq_resume('move_a'), dlq_resume('move_c');

-- ---------------------------------------------------------------------------
-- dlq_move_all: filters, max_messages, dry_run.
-- ---------------------------------------------------------------------------
SELECT queue FROM dlq_configure('move_f', require_listener => false);
SELECT queue FROM dlq_configure('move_g', require_listener => false);
SELECT dlq_store('move_f', jsonb_build_object('n', 100 + n), 'failed', c, s) > 0
  FROM (VALUES (1, 'api', '23505'), (2, 'api', '40001'), (3, 'etl', '23505'),
               (4, 'etl', '08006'), (5, NULL, NULL), (6, 'api', '23505')) v(n, c, s);
UPDATE dlq.messages SET stored_at = '2026-01-01'::timestamptz + ((payload->>'n')::int - 101) * interval '1 day'
 WHERE queue = 'move_f';
UPDATE dlq.messages SET status = 'review', attempts = 5 WHERE queue = 'move_f' AND payload->>'n' = '106';
SELECT dlq_test.move_state('move_f') AS before_f \gset
SELECT count(*) AS events_before FROM dlq.events \gset
SELECT r - 'request_id' AS dry_all FROM dlq_move_all('move_f', 'move_g', dry_run => true) r;
SELECT r - 'request_id' AS dry_api
  FROM dlq_move_all('move_f', 'move_g', component => 'api', dry_run => true) r;
SELECT r - 'request_id' AS dry_transient
  FROM dlq_move_all('move_f', 'move_g', error_class => 'transient', dry_run => true) r;
SELECT r - 'request_id' AS dry_range
  FROM dlq_move_all('move_f', 'move_g', since => '2026-01-02', until => '2026-01-05', dry_run => true) r;
SELECT r - 'request_id' AS dry_max
  FROM dlq_move_all('move_f', 'move_g', max_messages => 2, dry_run => true) r;
SELECT dlq_test.move_state('move_f') = :'before_f' AS dry_runs_moved_nothing,
       dlq_test.move_state('move_g') AS move_g,
       (SELECT count(*) FROM dlq.events) = :events_before AS no_event;
SELECT r - 'request_id' AS moved_sqlstate
  FROM dlq_move_all('move_f', 'move_g', sqlstate => '23505', max_messages => 2) r;
SELECT dlq_test.move_state('move_f') AS move_f, dlq_test.move_state('move_g') AS move_g;
SELECT queue, message_count, detail FROM dlq.events WHERE kind = 'moved' AND 'move_f' IN (queue, detail->>'from')
 ORDER BY event_id;
-- The rest, pending then review (106 stays in review: 5 attempts).
SELECT r - 'request_id' AS moved_rest FROM dlq_move_all('move_f', 'move_g') r;
SELECT dlq_test.move_state('move_f') AS move_f, dlq_test.move_state('move_g') AS move_g;

-- A target with a components list takes only those components.
UPDATE dlq.queues SET components = ARRAY['api'] WHERE queue = 'move_f';
SELECT r - 'request_id' AS components FROM dlq_move_all('move_g', 'move_f') r;
SELECT dlq_test.move_state('move_f') AS move_f, dlq_test.move_state('move_g') AS move_g;
UPDATE dlq.queues SET components = NULL WHERE queue = 'move_f';

-- ---------------------------------------------------------------------------
-- Trust (DESIGN 7.1): only rows captured from a table are re-applied to it.
-- ---------------------------------------------------------------------------
CREATE TABLE move_t1 (id int PRIMARY KEY, qty int CONSTRAINT move_t1_qty CHECK (qty > 0));
CREATE TABLE move_t2 (id int PRIMARY KEY, qty int);
CREATE TABLE move_t3 (id int PRIMARY KEY, qty int);
SELECT dlq_attach('move_t1', 'move_q1');
SELECT dlq_attach('move_t2', 'move_q2');
SELECT (dlq_configure('move_q1', max_attempts => 5)).max_attempts;
INSERT INTO move_t1 VALUES (1, 0);
SELECT message_id AS captured FROM dlq.messages WHERE queue = 'move_q1' \gset
SELECT queue, source_relation, payload FROM dlq.messages WHERE message_id = :captured;
-- Into a queue bound to another table: refused, it stays.
SELECT r - 'request_id' AS into_other_table FROM dlq_move(ARRAY[:captured], 'move_q2') r;
-- A stored (not captured) message into a bound queue: refused too.
SELECT r - 'request_id' AS stored_into_bound FROM dlq_move(ARRAY[dlq_test.move_id(9)], 'move_q1') r;
SELECT dlq_test.move_state('move_q2') AS move_q2, dlq_test.move_state('move_q1') AS move_q1;
-- Into an unbound queue it moves; when that queue is bound to another table
-- afterwards, replay still refuses it (42501, to review) and the table
-- stays empty.
SELECT queue FROM dlq_configure('move_q3', require_listener => false, max_attempts => 5);
SELECT r - 'request_id' AS into_unbound FROM dlq_move(ARRAY[:captured], 'move_q3') r;
SELECT (dlq_configure('move_q3', replay_target => 'move_t3')).replay_target;
SELECT r - 'request_id' - 'failures' AS dry_replay, r->'failures'->0->>'sqlstate' AS sqlstate
  FROM dlq_reprocess_all('move_q3', dry_run => true) r;
SELECT r - 'request_id' - 'failures' AS replay, r->'failures'->0->>'sqlstate' AS sqlstate,
       r->'failures'->0->>'error' AS error
  FROM dlq_reprocess_all('move_q3') r;
SELECT count(*) AS rows_in_move_t3 FROM move_t3;
SELECT queue, status, attempts, sqlstate FROM dlq.messages WHERE message_id = :captured;
-- Back into its own table's queue it is replayed there once the cause is fixed.
SELECT r - 'request_id' AS home FROM dlq_move(ARRAY[:captured], 'move_q1') r;
SELECT queue, status, attempts FROM dlq.messages WHERE message_id = :captured;
ALTER TABLE move_t1 DROP CONSTRAINT move_t1_qty;
SELECT r - 'request_id' - 'failures' AS replay_home FROM dlq_reprocess_all('move_q1') r;
SELECT * FROM move_t1;
SELECT count(*) AS rows_in_move_t2 FROM move_t2;

-- The target's own transient/permanent lists classify a moved message.
SELECT (dlq_configure('move_cls_b', transient_sqlstates => '{23503}')).queue;
SELECT dlq_store('move_cls_a', '{"fk": 1}', 'fk', sqlstate => '23503') AS cls_id \gset
SELECT error_class FROM dlq.messages WHERE message_id = :cls_id;
SELECT r->>'moved' AS moved FROM dlq_move(ARRAY[:cls_id], 'move_cls_b') r;
SELECT queue, error_class FROM dlq.messages WHERE message_id = :cls_id;

SELECT dlq_detach('move_t1'), dlq_detach('move_t2');
DROP TABLE move_t1, move_t2, move_t3;
DROP ROLE move_op;
