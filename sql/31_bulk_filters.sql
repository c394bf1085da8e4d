-- Bulk calls (issue 13): filters (component, sqlstate, error_class, since,
-- until) and dry_run on dlq_reprocess_all, dlq_discard_all and
-- dlq_resolve_all; reason and ticket on dlq_reprocess(_all); resolution on
-- dlq_resolve; every bad argument with its SQLSTATE; privileges.
\set VERBOSITY default
SET client_min_messages = warning;
SET TIME ZONE 'UTC';

CREATE ROLE bulk_op IN ROLE dlq_operator;
CREATE ROLE bulk_reader IN ROLE dlq_reader;

-- bulk_state(q): every message as n:status:attempts[:resolution], and the
-- number of events of the queue: equal before and after a dry run.
CREATE FUNCTION dlq_test.bulk_state(q text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(format('%s:%s:%s%s', payload->>'n', status, attempts,
                             ':' || resolution), ' ' ORDER BY message_id)
           || format(' | %s events', (SELECT count(*) FROM dlq.events e WHERE e.queue = q))
      FROM dlq.messages WHERE queue = q
$$;
-- bulk_fill(q): six messages, stored on six days of January 2026.
--   n component sqlstate class
--   1 api       23505    permanent
--   2 api       40001    transient
--   3 etl       23505    permanent
--   4 etl       08006    transient
--   5 -         -        permanent
--   6 api       23505    permanent
CREATE FUNCTION dlq_test.bulk_fill(q text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dlq_store(q, jsonb_build_object('n', n), 'failed ' || n, c, s)
       FROM (VALUES (1, 'api', '23505'), (2, 'api', '40001'), (3, 'etl', '23505'),
                    (4, 'etl', '08006'), (5, NULL, NULL), (6, 'api', '23505')) v(n, c, s);
    UPDATE dlq.messages SET stored_at = '2026-01-01 00:00+00'::timestamptz + ((payload->>'n')::int - 1) * interval '1 day'
     WHERE queue = q;
END $$;

SELECT queue FROM dlq_configure('bulk_a', require_listener => false, max_attempts => 3);
SELECT dlq_test.bulk_fill('bulk_a');
SELECT n, component, sqlstate, error_class, stored_at
  FROM (SELECT payload->>'n' AS n, * FROM dlq.messages WHERE queue = 'bulk_a') m ORDER BY n;

-- ---------------------------------------------------------------------------
-- Every bad argument, before anything changes.
-- ---------------------------------------------------------------------------
SELECT dlq_test.bulk_state('bulk_a') AS before_bad_arguments \gset
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', sqlstate => '2350')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', sqlstate => '23505x')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', sqlstate => '23a05')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', error_class => 'fatal')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', since => '2026-01-03', until => '2026-01-03')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', since => '2026-01-04', until => '2026-01-03')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', component => '')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', component => E'a\tb')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', component => repeat('c', 64))$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', dry_run => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', max_messages => 0)$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', reason => repeat('r', 54001))$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', ticket => repeat('t', 201))$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', ticket => '')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', ticket => E'INC-1\n')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', ticket => U&'INC\0085')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_nope', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_reprocess(ARRAY[1], reason => repeat('r', 54001))$$);
SELECT dlq_test.err($$SELECT dlq_reprocess(ARRAY[1], ticket => repeat('é', 101))$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', sqlstate => 'ABCD')$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', error_class => 'Transient')$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', since => 'infinity', until => '2026-01-01')$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', dry_run => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', 'replaying', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_nope', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', sqlstate => '')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', error_class => '')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', since => '2026-01-02', until => '2026-01-01')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', resolution => 'bogus')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', resolution => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', note => repeat('n', 54001))$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', 'replaying')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', 'resolved')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', 'expired')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', NULL)$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', 'done')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all(NULL)$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_nope')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', dry_run => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_resolve(ARRAY[1], 'n', 'Fixed')$$);
SELECT dlq_test.err($$SELECT dlq_resolve(ARRAY[1], 'n', NULL)$$);
SELECT dlq_test.err($$SELECT dlq_resolve(ARRAY[1], 'n', repeat('f', 54001))$$);
SELECT dlq_test.bulk_state('bulk_a') = :'before_bad_arguments' AS nothing_changed;

-- ---------------------------------------------------------------------------
-- dlq_reprocess_all: dry runs change nothing, notify nothing, audit nothing.
-- ---------------------------------------------------------------------------
SELECT dlq_test.bulk_state('bulk_a') AS before_dry \gset
SELECT coalesce(last_replay_at::text, 'never') AS last_replay_before FROM dlq.queues WHERE queue = 'bulk_a' \gset
-- A notification would be printed after the next statement (it is not).
LISTEN dlq_bulk_a;
SELECT r - 'request_id' AS dry_all FROM dlq_reprocess_all('bulk_a', dry_run => true) r;
SELECT 'no notification' AS listened;
UNLISTEN *;
SELECT r - 'request_id' AS dry_permanent
  FROM dlq_reprocess_all('bulk_a', error_class => 'permanent', dry_run => true) r;
SELECT r - 'request_id' AS dry_transient
  FROM dlq_reprocess_all('bulk_a', error_class => 'transient', dry_run => true) r;
SELECT r - 'request_id' AS dry_sqlstate
  FROM dlq_reprocess_all('bulk_a', sqlstate => '23505', dry_run => true) r;
SELECT r - 'request_id' AS dry_api_23505
  FROM dlq_reprocess_all('bulk_a', component => 'api', sqlstate => '23505', dry_run => true) r;
SELECT r - 'request_id' AS dry_range
  FROM dlq_reprocess_all('bulk_a', since => '2026-01-02', until => '2026-01-04', dry_run => true) r;
SELECT r - 'request_id' AS dry_until_exclusive
  FROM dlq_reprocess_all('bulk_a', until => '2026-01-02', dry_run => true) r;
SELECT r - 'request_id' AS dry_since_inclusive
  FROM dlq_reprocess_all('bulk_a', since => '2026-01-06', dry_run => true) r;
SELECT r - 'request_id' AS dry_max
  FROM dlq_reprocess_all('bulk_a', max_messages => 2, dry_run => true) r;
SELECT r - 'request_id' AS dry_none
  FROM dlq_reprocess_all('bulk_a', sqlstate => '99999', dry_run => true) r;
SELECT dlq_test.bulk_state('bulk_a') = :'before_dry' AS dry_runs_changed_nothing,
       coalesce(last_replay_at::text, 'never') = :'last_replay_before' AS not_stamped
  FROM dlq.queues WHERE queue = 'bulk_a';

-- The real call does what the dry run said, with reason and ticket on the event.
SELECT r - 'request_id' AS real_permanent
  FROM dlq_reprocess_all('bulk_a', error_class => 'permanent', reason => 'unique index fixed',
                         ticket => 'INC-4711') r;
SELECT dlq_test.bulk_state('bulk_a');
SELECT kind, actor, message_count, detail FROM dlq.events
 WHERE queue = 'bulk_a' AND kind = 'replay_requested' ORDER BY event_id;

-- Paused queue: a dry run fails like the real call would, and changes nothing.
SELECT dlq_pause('bulk_a');
SELECT dlq_test.bulk_state('bulk_a') AS before_paused \gset
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', dry_run => true)$$);
SELECT dlq_test.bulk_state('bulk_a') = :'before_paused' AS paused_changed_nothing;
SELECT dlq_resume('bulk_a');
-- No live consumer: the same (only the message is shown: its SQLSTATE is
-- issue 13's distinct one, tested in 30_replay).
SELECT (dlq_configure('bulk_a', require_listener => true)).require_listener;
SELECT dlq_test.bulk_state('bulk_a') AS before_no_consumer \gset
SELECT dlq_test.try($$SELECT dlq_reprocess_all('bulk_a', dry_run => true)$$)
       LIKE '%no consumer is listening on queue "bulk_a"' AS dry_run_needs_a_consumer;
-- ... unless nothing would be handed over.
SELECT r - 'request_id' AS dry_nothing_to_hand
  FROM dlq_reprocess_all('bulk_a', sqlstate => '99999', dry_run => true) r;
SELECT dlq_test.bulk_state('bulk_a') = :'before_no_consumer' AS no_consumer_changed_nothing;
SELECT (dlq_configure('bulk_a', require_listener => false)).require_listener;

-- dlq_reprocess by id: reason and ticket on replay_requested and redriven.
SELECT dlq_nack(dlq_test.id('bulk_a', 1), 'again', retry_in => NULL);
SELECT dlq_nack(dlq_test.id('bulk_a', 3), 'again');
SELECT dlq_test.bulk_state('bulk_a');
UPDATE dlq.messages SET attempts = 3, status = 'review' WHERE message_id = dlq_test.id('bulk_a', 3);
SELECT r - 'request_id' AS by_id
  FROM dlq_reprocess(ARRAY[dlq_test.id('bulk_a', 1), dlq_test.id('bulk_a', 3)], true,
                     'redrive after fix', 'JIRA-12') r;
SELECT kind, message_count, detail FROM dlq.events
 WHERE queue = 'bulk_a' AND kind IN ('replay_requested', 'redriven') ORDER BY event_id DESC LIMIT 2;
-- Without reason and ticket: no detail, as in 1.0.
SELECT dlq_nack(dlq_test.id('bulk_a', 1), 'again');
SELECT dlq_reprocess(ARRAY[dlq_test.id('bulk_a', 1)])->>'replayed' AS replayed;
SELECT kind, detail FROM dlq.events WHERE queue = 'bulk_a' ORDER BY event_id DESC LIMIT 1;

-- Dry run with force: review messages count as redriven would.
SELECT dlq_nack(dlq_test.id('bulk_a', 3), 'again');
UPDATE dlq.messages SET attempts = 3, status = 'review' WHERE message_id = dlq_test.id('bulk_a', 3);
SELECT dlq_test.bulk_state('bulk_a') AS before_force \gset
SELECT r - 'request_id' AS dry_force
  FROM dlq_reprocess_all('bulk_a', force => true, dry_run => true) r;
SELECT dlq_test.bulk_state('bulk_a') = :'before_force' AS force_dry_changed_nothing;

-- ---------------------------------------------------------------------------
-- dlq_discard_all with filters and dry_run.
-- ---------------------------------------------------------------------------
SELECT queue FROM dlq_configure('bulk_d', require_listener => false);
SELECT dlq_test.bulk_fill('bulk_d');
SELECT dlq_test.bulk_state('bulk_d') AS before_discard \gset
SELECT r - 'request_id' AS dry_discard
  FROM dlq_discard_all('bulk_d', sqlstate => '23505', dry_run => true) r;
SELECT r - 'request_id' AS dry_discard_etl
  FROM dlq_discard_all('bulk_d', component => 'etl', error_class => 'transient', dry_run => true) r;
SELECT r - 'request_id' AS dry_discard_old
  FROM dlq_discard_all('bulk_d', older_than => '1 day', until => '2026-01-03', dry_run => true) r;
SELECT r - 'request_id' AS dry_discard_review
  FROM dlq_discard_all('bulk_d', 'review', dry_run => true) r;
SELECT dlq_test.bulk_state('bulk_d') = :'before_discard' AS discard_dry_changed_nothing;
SELECT r - 'request_id' AS discard_range
  FROM dlq_discard_all('bulk_d', since => '2026-01-02', until => '2026-01-04') r;
SELECT dlq_test.bulk_state('bulk_d');
SELECT r - 'request_id' AS discard_sqlstate
  FROM dlq_discard_all('bulk_d', sqlstate => '23505', error_class => 'permanent') r;
SELECT dlq_test.bulk_state('bulk_d');
SELECT kind, actor, message_count, detail FROM dlq.events
 WHERE queue = 'bulk_d' AND kind = 'discarded' ORDER BY event_id;
-- 1.0's positional form still works.
SELECT r - 'request_id' AS positional FROM dlq_discard_all('bulk_d', 'pending', 'etl', '1 day') r;
SELECT dlq_test.bulk_state('bulk_d');

-- ---------------------------------------------------------------------------
-- dlq_resolve with a resolution, kept on the message and the event.
-- ---------------------------------------------------------------------------
SELECT queue FROM dlq_configure('bulk_r', require_listener => false, max_attempts => 2);
SELECT dlq_test.bulk_fill('bulk_r');
SELECT r - 'request_id' AS resolved
  FROM dlq_resolve(ARRAY[dlq_test.id('bulk_r', 1), dlq_test.id('bulk_r', 2)], 'known bug', 'duplicate') r;
SELECT r - 'request_id' AS resolved_default
  FROM dlq_resolve(ARRAY[dlq_test.id('bulk_r', 3)]) r;
SELECT r - 'request_id' AS resolved_positional
  FROM dlq_resolve(ARRAY[dlq_test.id('bulk_r', 4)], 'fixed upstream', 'fixed') r;
SELECT dlq_test.bulk_state('bulk_r');
SELECT kind, actor, message_count, detail FROM dlq.events
 WHERE queue = 'bulk_r' AND kind = 'resolved' ORDER BY event_id;
-- The API row type has it, at its end: dlq_get, dlq_list, dlq_claim.
SELECT resolution, status FROM dlq_get(dlq_test.id('bulk_r', 1));
SELECT payload->>'n' AS n, resolution FROM dlq_list('bulk_r', status => 'resolved');
SELECT (SELECT attname FROM pg_attribute WHERE attrelid = 'dlq.message'::regclass
         AND attnum = (SELECT max(attnum) FROM pg_attribute WHERE attrelid = 'dlq.message'::regclass)) AS last_column;
SELECT dlq_reprocess(ARRAY[dlq_test.id('bulk_r', 5)])->>'replayed' AS replayed;
SELECT payload->>'n' AS n, status, resolution FROM dlq_claim('bulk_r');
-- An ack closes without a resolution.
SELECT dlq_ack(ARRAY[dlq_test.id('bulk_r', 5)]);
SELECT status, resolution FROM dlq.messages WHERE message_id = dlq_test.id('bulk_r', 5);
-- The column accepts only the four values, even for the owner.
SELECT dlq_test.try(format($$UPDATE dlq.messages SET resolution = 'other' WHERE message_id = %s$$,
                           dlq_test.id('bulk_r', 1)));

-- ---------------------------------------------------------------------------
-- dlq_resolve_all with filters and dry_run.
-- ---------------------------------------------------------------------------
SELECT queue FROM dlq_configure('bulk_s', require_listener => false, max_attempts => 1);
SELECT dlq_test.bulk_fill('bulk_s');
-- 4 and 5 in review, 6 replaying.
SELECT dlq_reprocess(ARRAY[dlq_test.id('bulk_s', 4), dlq_test.id('bulk_s', 5), dlq_test.id('bulk_s', 6)])->>'replayed';
SELECT dlq_nack(dlq_test.id('bulk_s', 4), 'x'), dlq_nack(dlq_test.id('bulk_s', 5), 'x');
SELECT dlq_test.bulk_state('bulk_s') AS before_resolve_all \gset
SELECT :'before_resolve_all' AS state;
SELECT r - 'request_id' AS dry_resolve FROM dlq_resolve_all('bulk_s', dry_run => true) r;
SELECT r - 'request_id' AS dry_resolve_review FROM dlq_resolve_all('bulk_s', 'review', dry_run => true) r;
SELECT r - 'request_id' AS dry_resolve_api
  FROM dlq_resolve_all('bulk_s', component => 'api', error_class => 'permanent', dry_run => true) r;
SELECT dlq_test.bulk_state('bulk_s') = :'before_resolve_all' AS resolve_dry_changed_nothing;
SELECT r - 'request_id' AS resolve_api
  FROM dlq_resolve_all('bulk_s', component => 'api', since => '2026-01-01', until => '2026-01-06',
                       note => 'dup of #12', resolution => 'ignored') r;
SELECT dlq_test.bulk_state('bulk_s');
SELECT r - 'request_id' AS resolve_review
  FROM dlq_resolve_all('bulk_s', 'review', component => 'etl', resolution => 'fixed') r;
SELECT dlq_test.bulk_state('bulk_s');
SELECT kind, actor, message_count, detail FROM dlq.events
 WHERE queue = 'bulk_s' AND kind = 'resolved' ORDER BY event_id;
-- Nothing to resolve: no event.
SELECT r - 'request_id' AS nothing FROM dlq_resolve_all('bulk_s', sqlstate => '99999') r;
SELECT count(*) AS resolved_events FROM dlq.events WHERE queue = 'bulk_s' AND kind = 'resolved';
-- Counts follow (etl_status reads dlq.counts).
SELECT pending, replaying, review, resolved FROM etl_status('bulk_s');

-- ---------------------------------------------------------------------------
-- Privileges: a reader calls none of them (42501); the operator's calls are
-- audited as the operator.
-- ---------------------------------------------------------------------------
SET ROLE bulk_reader;
SELECT dlq_test.err($$SELECT dlq_reprocess(ARRAY[1], reason => 'r')$$);
SELECT dlq_test.err($$SELECT dlq_reprocess_all('bulk_a', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_discard_all('bulk_a', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_resolve(ARRAY[1], 'n', 'fixed')$$);
SELECT dlq_test.err($$SELECT dlq_resolve_all('bulk_a', dry_run => true)$$);
SELECT dlq_test.err($$SELECT dlq_move(ARRAY[1], 'bulk_d')$$);
SELECT dlq_test.err($$SELECT dlq_move_all('bulk_a', 'bulk_d', dry_run => true)$$);
RESET ROLE;
SET ROLE bulk_op;
SELECT r - 'request_id' AS as_operator
  FROM dlq_resolve_all('bulk_a', component => 'etl', resolution => 'fixed') r;
RESET ROLE;
SELECT actor, kind, message_count FROM dlq.events WHERE queue = 'bulk_a' ORDER BY event_id DESC LIMIT 1;

DROP ROLE bulk_op, bulk_reader;

-- ---------------------------------------------------------------------------
-- A 1.0 schema is still served by this library (1.0's shorter signatures,
-- no resolution column), and one session goes on across ALTER EXTENSION
-- UPDATE: its plans prepared for 1.0 are prepared again.
-- ---------------------------------------------------------------------------
SELECT current_database() AS bulk_regress_db \gset
CREATE DATABASE dlq_bulk_old;
\c dlq_bulk_old
SET client_min_messages = warning;
CREATE EXTENSION dlq VERSION '1.0';
INSERT INTO dlq.queues (queue, channel, require_listener, max_attempts)
VALUES ('old_q', 'dlq_old_q', false, 3);
SELECT count(dlq_store('old_q', jsonb_build_object('n', n), 'e', 'api', '23505')) FROM generate_series(1, 6) n;
SELECT r - 'request_id' AS reprocess_1_0
  FROM dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE payload->>'n' IN ('1', '2', '3'))) r;
SELECT payload->>'n' AS n FROM dlq_claim('old_q') ORDER BY 1;
SELECT r - 'request_id' AS resolve_1_0
  FROM dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE payload->>'n' = '4'), 'by hand') r;
SELECT r - 'request_id' AS reprocess_all_1_0 FROM dlq_reprocess_all('old_q', 'api', 1, false) r;
SELECT r - 'request_id' AS discard_all_1_0 FROM dlq_discard_all('old_q', 'resolved', 'api', NULL) r;
SELECT string_agg(payload->>'n' || ':' || status, ' ' ORDER BY message_id) AS old_state FROM dlq.messages;
ALTER EXTENSION dlq UPDATE;
-- The same session after the update: resolution is there, and dlq_claim
-- returns the new row type.
SELECT r - 'request_id' AS resolve_1_1
  FROM dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE payload->>'n' = '6'), 'by hand', 'ignored') r;
SELECT dlq_store('old_q', '{"n": 7}', 'e') > 0 AS stored;
SELECT r - 'request_id' AS reprocess_1_1
  FROM dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE payload->>'n' = '7'), reason => 'after update') r;
SELECT payload->>'n' AS n, resolution FROM dlq_claim('old_q') ORDER BY 1;
SELECT payload->>'n' AS n, status, resolution FROM dlq.messages ORDER BY message_id;
SELECT kind, detail FROM dlq.events WHERE kind IN ('resolved', 'replay_requested') ORDER BY event_id;
\c :bulk_regress_db
DROP DATABASE dlq_bulk_old WITH (FORCE);
