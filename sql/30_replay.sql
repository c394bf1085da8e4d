-- Replay lifecycle, operator side: dlq_reprocess, dlq_reprocess_all,
-- dlq_discard(_all), dlq_resolve, dlq_configure, dlq_pause/resume, history.
\set VERBOSITY default

-- Settings: defaults, named changes, audited, every bad value refused.
SELECT queue, max_attempts, channel, require_listener, auto_retry, paused
  FROM dlq_configure('rp_a', require_listener => false, max_attempts => 3);
SELECT kind, actor, queue, detail FROM dlq.events WHERE queue = 'rp_a' ORDER BY event_id;
SELECT dlq_test.try($$SELECT dlq_configure(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_configure('')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', max_attempts => 0)$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', max_attempts => 1001)$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', retention => '0')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', resolved_retention => '-1 s')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', retry_base => '0')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', retry_factor => 0.5)$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', retry_factor => 'NaN')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', retry_max => '-1 h')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', alert_threshold => 0)$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', alert_cooldown => '-1 s')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', channel => '')$$);
SELECT dlq_test.try($$SELECT dlq_configure('rp_a', replay_target => 'pg_tables'::regclass)$$);
SELECT max_attempts, channel, require_listener, retry_factor FROM dlq.queues WHERE queue = 'rp_a';
SELECT count(*) AS configured_events FROM dlq.events WHERE queue = 'rp_a';

-- pending -> replaying: one call, attempts + 1, one request id, one event.
SELECT dlq_store('rp_a', jsonb_build_object('n', g), 'failed ' || g) IS NOT NULL
  FROM generate_series(1, 6) g;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_a', 1), dlq_test.id('rp_a', 2), -5]) - 'request_id' AS summary;
SELECT dlq_test.st('rp_a');
SELECT count(DISTINCT replay_request_id) AS one_request, bool_and(claimed_by IS NULL) AS unclaimed
  FROM dlq.messages WHERE queue = 'rp_a' AND status = 'replaying';
SELECT e.kind, e.actor, e.message_count, e.message_ids = ARRAY[dlq_test.id('rp_a', 1), dlq_test.id('rp_a', 2)] AS ids,
       e.request_id = m.replay_request_id AS same_request
  FROM dlq.events e JOIN dlq.messages m ON m.message_id = dlq_test.id('rp_a', 1)
 WHERE e.queue = 'rp_a' AND e.kind = 'replay_requested';
-- Replaying again skips them; duplicates in the array count once.
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_a', 1), dlq_test.id('rp_a', 1), dlq_test.id('rp_a', 3)]) - 'request_id' AS summary;
SELECT dlq_test.st('rp_a');

-- Id arrays: NULL, empty, NULL element, two dimensions, too many.
SELECT dlq_test.try($$SELECT dlq_reprocess(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_reprocess('{}')$$);
SELECT dlq_test.try($$SELECT dlq_reprocess(ARRAY[1, NULL])$$);
SELECT dlq_test.try($$SELECT dlq_reprocess('{{1},{2}}')$$);
SET dlq.max_ids_per_call = 2;
SELECT dlq_test.try($$SELECT dlq_reprocess(ARRAY[1, 2, 3])$$);
SELECT dlq_test.try($$SELECT dlq_discard(ARRAY[1, 2, 3])$$);
SELECT dlq_test.try($$SELECT dlq_resolve(ARRAY[1, 2, 3])$$);
RESET dlq.max_ids_per_call;
SELECT dlq_test.try($$SELECT dlq_reprocess(ARRAY[1], NULL)$$);
SELECT dlq_test.try($$SELECT dlq_discard(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_resolve('{}')$$);
SELECT dlq_test.st('rp_a');

-- Paused queue: 55000 and nothing changes, for both forms.
SELECT dlq_pause('rp_a');
SELECT paused FROM dlq.queues WHERE queue = 'rp_a';
SELECT dlq_test.try(format('SELECT dlq_reprocess(ARRAY[%s])', dlq_test.id('rp_a', 4)));
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_a')$$);
SELECT dlq_test.st('rp_a');
SELECT dlq_resume('rp_a');
SELECT dlq_test.try($$SELECT dlq_pause('rp_nope')$$);
SELECT dlq_test.try($$SELECT dlq_resume(NULL)$$);
SELECT kind, actor FROM dlq.events WHERE queue = 'rp_a' AND kind IN ('paused', 'resumed') ORDER BY event_id;

-- dlq_reprocess_all: every pending message, max_messages, component.
SELECT dlq_store('rp_a', jsonb_build_object('n', 7), 'other component', component => 'loader') IS NOT NULL;
SELECT dlq_reprocess_all('rp_a', max_messages => 1) - 'request_id' AS summary;
SELECT dlq_reprocess_all('rp_a', component => 'loader') - 'request_id' AS summary;
SELECT dlq_test.st('rp_a');
SELECT dlq_reprocess_all('rp_a') - 'request_id' AS summary;
SELECT dlq_test.st('rp_a');
SELECT dlq_reprocess_all('rp_a') - 'request_id' AS nothing_left;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_nope')$$);
SELECT dlq_test.try($$SELECT dlq_reprocess_all(NULL)$$);
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_a', max_messages => 0)$$);
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_a', force => NULL)$$);
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_a', component => '')$$);

-- A NOTIFY queue without a live consumer: DLQ01 (1.0: 55000) with a hint, nothing changes.
SELECT (dlq_configure('rp_b')).queue;
SELECT dlq_store('rp_b', jsonb_build_object('n', g), 'e') IS NOT NULL FROM generate_series(1, 2) g;
SELECT dlq_reprocess_all('rp_b');
SELECT dlq_test.try(format('SELECT dlq_reprocess(ARRAY[%s])', dlq_test.id('rp_b', 1)));
SELECT dlq_test.st('rp_b');
-- Nothing eligible: no consumer needed (resolved messages are only skipped).
SELECT dlq_resolve(ARRAY[dlq_test.id('rp_b', 2)]) - 'request_id' AS resolved;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_b', 2)]) - 'request_id' AS summary;
-- This session registers as a consumer: now it replays.
-- (UNLISTEN before COMMIT keeps the notification itself out of this test;
-- the registration stays until the session ends.)
SELECT dlq_listen('rp_b');
BEGIN;
SELECT dlq_reprocess_all('rp_b') - 'request_id' AS summary;
UNLISTEN *;
COMMIT;
SELECT dlq_test.st('rp_b');

-- review -> replaying only with force: an audited redrive, fresh budget.
SELECT (dlq_configure('rp_c', require_listener => false, max_attempts => 1)).queue;
SELECT dlq_store('rp_c', jsonb_build_object('n', g), 'e') IS NOT NULL FROM generate_series(1, 2) g;
SELECT dlq_reprocess_all('rp_c') ->> 'replayed' AS replayed;
SELECT dlq_nack(dlq_test.id('rp_c', 1), 'poison'), dlq_nack(dlq_test.id('rp_c', 2), 'poison');
SELECT dlq_test.st('rp_c');
SELECT dlq_reprocess_all('rp_c') - 'request_id' AS without_force;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_c', 1)]) - 'request_id' AS without_force;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_c', 1)], force => true) - 'request_id' AS redrive;
SELECT dlq_reprocess_all('rp_c', force => true) - 'request_id' AS redrive_all;
SELECT dlq_test.st('rp_c');
SELECT kind, message_count FROM dlq.events WHERE queue = 'rp_c' AND kind IN ('redriven', 'replay_requested')
 ORDER BY event_id;

-- dlq_discard: permanent, audited; replaying messages are skipped.
SELECT dlq_store('rp_d', jsonb_build_object('n', g), 'e') IS NOT NULL FROM generate_series(1, 4) g;
SELECT (dlq_configure('rp_d', require_listener => false)).queue;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rp_d', 1)]) ->> 'replayed' AS replayed;
SELECT dlq_discard(ARRAY[dlq_test.id('rp_d', 1), dlq_test.id('rp_d', 2), -1]) - 'request_id' AS summary;
SELECT dlq_test.st('rp_d');
SELECT kind, actor, message_count, message_ids = ARRAY[dlq_test.id('rp_d', 3) - 1] AS ids
  FROM dlq.events WHERE queue = 'rp_d' AND kind = 'discarded';

-- dlq_resolve: pending, replaying and review close; resolved ones skip.
SELECT dlq_resolve(ARRAY[dlq_test.id('rp_d', 1), dlq_test.id('rp_d', 3)], 'fixed by hand') - 'request_id' AS summary;
SELECT dlq_resolve(ARRAY[dlq_test.id('rp_d', 1), -1]) - 'request_id' AS again;
SELECT dlq_test.st('rp_d');
SELECT bool_and(resolved_at IS NOT NULL AND claimed_by IS NULL) AS closed
  FROM dlq.messages WHERE queue = 'rp_d' AND status = 'resolved';
SELECT kind, message_count, detail FROM dlq.events WHERE queue = 'rp_d' AND kind = 'resolved' ORDER BY event_id;

-- dlq_discard_all: by status, component, age; replaying refused.
SELECT dlq_store('rp_e', jsonb_build_object('n', g), 'e', component => CASE WHEN g <= 3 THEN 'x' END) IS NOT NULL
  FROM generate_series(1, 5) g;
SELECT dlq_discard_all('rp_e', older_than => '1 hour') - 'request_id' AS none_old_enough;
SELECT dlq_discard_all('rp_e', component => 'x') - 'request_id' AS component_x;
SELECT dlq_test.st('rp_e');
SELECT dlq_discard_all('rp_e', 'resolved') - 'request_id' AS no_resolved;
SELECT dlq_discard_all('rp_e') - 'request_id' AS the_rest;
SELECT count(*) AS left_in_rp_e FROM dlq.messages WHERE queue = 'rp_e';
SELECT kind, message_count, array_length(message_ids, 1) FROM dlq.events WHERE queue = 'rp_e' ORDER BY event_id;
SELECT dlq_test.try($$SELECT dlq_discard_all('rp_e', 'replaying')$$);
SELECT dlq_test.try($$SELECT dlq_discard_all('rp_e', 'any')$$);
SELECT dlq_test.try($$SELECT dlq_discard_all('rp_e', NULL)$$);
SELECT dlq_test.try($$SELECT dlq_discard_all('rp_e', older_than => '-1 s')$$);
SELECT dlq_test.try($$SELECT dlq_discard_all('rp_nope')$$);

-- Bulk forms work in batches: 2500 messages, more than two batches.
SELECT (dlq_configure('rp_f', require_listener => false)).queue;
SELECT count(dlq_store('rp_f', jsonb_build_object('n', g), 'e')) FROM generate_series(1, 2500) g;
SELECT dlq_reprocess_all('rp_f', max_messages => 2100) - 'request_id' AS summary;
SELECT status, count(*), min(attempts), max(attempts) FROM dlq.messages WHERE queue = 'rp_f' GROUP BY 1 ORDER BY 1;
SELECT kind, message_count, message_ids IS NULL AS ids_omitted FROM dlq.events WHERE queue = 'rp_f';
SELECT dlq_resolve(array_agg(message_id)) - 'request_id' AS summary
  FROM dlq.messages WHERE queue = 'rp_f' AND status = 'replaying';
SELECT dlq_discard(array_agg(message_id)) - 'request_id' AS summary FROM dlq.messages WHERE queue = 'rp_f';
SELECT count(*) FROM dlq.messages WHERE queue = 'rp_f';

-- History: every event naming a message.
SELECT kind, message_count FROM dlq_history(dlq_test.id('rp_c', 1));
SELECT count(*) FROM dlq_history(-1);

-- Queues with a replay target: privileges are checked up front (42501,
-- nothing changes).  Re-applying rows is the capture module's and is
-- tested there.
CREATE TABLE rp_target (n int);
SELECT (dlq_configure('rp_t', replay_target => 'rp_target')).replay_target;
SELECT dlq_store('rp_t', '{"n": 1}', 'e') IS NOT NULL;
CREATE ROLE rp_op IN ROLE dlq_operator;
SET ROLE rp_op;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_t')$$);
RESET ROLE;
SELECT dlq_test.st('rp_t');
SELECT (dlq_configure('rp_t', replay_target => 0)).replay_target IS NULL AS cleared;

-- Privileges: operators replay, readers only read history, others nothing.
CREATE ROLE rp_reader IN ROLE dlq_reader;
CREATE ROLE rp_nobody;
SET ROLE rp_reader;
SELECT dlq_test.try($$SELECT dlq_reprocess_all('rp_a')$$);
SELECT dlq_test.try($$SELECT dlq_pause('rp_a')$$);
SELECT count(*) > 0 AS reader_sees_history FROM dlq_history(dlq_test.id('rp_c', 1));
RESET ROLE;
SET ROLE rp_nobody;
SELECT dlq_test.try($$SELECT * FROM dlq_history(1)$$);
SELECT dlq_test.try($$SELECT dlq_discard(ARRAY[1])$$);
RESET ROLE;
SET ROLE rp_op;
SELECT dlq_resolve(ARRAY[dlq_test.id('rp_t', 1)], 'op') - 'request_id' AS op_resolves;
RESET ROLE;
SELECT actor FROM dlq.events WHERE queue = 'rp_t' AND kind = 'resolved';
DROP ROLE rp_op, rp_reader, rp_nobody;
DROP TABLE rp_target;

-- Every action of this test left events naming the role and a request id.
SELECT count(*) > 0 AS events, count(*) FILTER (WHERE request_id IS NULL OR actor IS NULL) AS without_request
  FROM dlq.events WHERE queue LIKE 'rp\_%' AND kind <> 'alert';
