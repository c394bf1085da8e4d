-- Retry by error class (DESIGN 7.2): auto_retry retries transient errors
-- only unless retry_on => 'all'; transient_sqlstates and
-- permanent_sqlstates override the built-in classes per queue, and
-- error_class follows them.  Also the validation of every setting
-- dlq_configure gained in 1.1, and who may call it.
\set VERBOSITY default
CREATE ROLE rc_operator LOGIN IN ROLE dlq_operator;
CREATE ROLE rc_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE rc_writer LOGIN IN ROLE dlq_writer;

-- rc_state(queue): every message as sqlstate:error_class:retry-scheduled, by id.
CREATE FUNCTION rc_state(q text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(format('%s:%s:%s', coalesce(sqlstate, '-'), error_class,
                             CASE WHEN next_retry_at IS NULL THEN 'wait' ELSE 'retry' END),
                      ' ' ORDER BY message_id)
      FROM dlq.messages WHERE queue = q AND status = 'pending'
$$;
-- rc_due(): what the worker's retry step would retry now, per queue.
CREATE FUNCTION rc_due() RETURNS TABLE (queue text, sqlstates text) LANGUAGE sql AS $$
    SELECT d.queue, string_agg(coalesce(m.sqlstate, '-'), ',' ORDER BY m.message_id)
      FROM dlq.worker_retry_due(1000) d, unnest(d.message_ids) i
      JOIN dlq.messages m ON m.message_id = i
     WHERE d.queue LIKE 'rc\_%'
     GROUP BY d.queue ORDER BY d.queue
$$;

-- The classification itself: a listed code, then a listed class, then the
-- built-in classes; permanent before transient at the same length.
SELECT s, t, p, dlq.sqlstate_class(s, t, p)
  FROM (VALUES ('23503', NULL::text[], NULL::text[]), ('40001', NULL, NULL), ('55P03', NULL, NULL),
               ('55000', NULL, NULL), ('08006', NULL, NULL), (NULL, '{23}', NULL),
               ('23503', '{23}', NULL), ('23503', '{23}', '{23503}'), ('23505', '{23}', '{23503}'),
               ('40001', '{40001}', '{40}'), ('40P01', '{40001}', '{40}'),
               ('40001', NULL, '{40}'), ('40001', '{40}', '{40}'), ('40001', '{40001}', '{40001}'),
               ('4', '{4}', NULL), ('2350', '{2350}', NULL), ('235031', '{23}', NULL))
       AS v(s, t, p);

-- A default auto_retry queue: the 23503 and the message without a SQLSTATE
-- (permanent) wait for an operator, the 40001 is scheduled.
SELECT queue, auto_retry, retry_on, transient_sqlstates, permanent_sqlstates
  FROM dlq_configure('rc_q', auto_retry => true, require_listener => false, retry_base => '1 hour');
SELECT dlq_store('rc_q', '{"n": 1}', 'insert or update on table "orders" violates foreign key constraint',
                 sqlstate => '23503') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 2}', 'could not serialize access', sqlstate => '40001') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 3}', 'HTTP 503') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 4}', 'deadlock detected', sqlstate => '40P01') IS NOT NULL AS stored;
SELECT rc_state('rc_q');
-- All due now (as a nack or a failed replay may leave them): the worker's
-- retry step takes the transient ones only, and the permanent ones lose
-- next_retry_at and stay pending for an operator.  (In a transaction that
-- puts the retries off again, so that the running worker never sees them due.)
BEGIN;
UPDATE dlq.messages SET next_retry_at = now() - interval '1 second' WHERE queue = 'rc_q';
SELECT rc_state('rc_q');
SELECT * FROM rc_due();
SELECT rc_state('rc_q');
SELECT * FROM rc_due();
UPDATE dlq.messages SET next_retry_at = now() + interval '1 hour'
 WHERE queue = 'rc_q' AND next_retry_at IS NOT NULL;
COMMIT;

-- retry_on => 'all': every pending message is scheduled again at once.
SELECT retry_on FROM dlq_configure('rc_q', retry_on => 'all');
SELECT rc_state('rc_q');
BEGIN;
UPDATE dlq.messages SET next_retry_at = now() - interval '1 second' WHERE queue = 'rc_q';
SELECT * FROM rc_due();
ROLLBACK;
SELECT retry_on FROM dlq_configure('rc_q', retry_on => 'transient');
SELECT rc_state('rc_q');

-- Overrides: 40001 permanent on this queue (a code beats its class), class
-- 23 transient; the open messages are reclassified in the same call, and
-- the number is in the audit event.
SELECT transient_sqlstates, permanent_sqlstates
  FROM dlq_configure('rc_q', permanent_sqlstates => '{40001}', transient_sqlstates => '{23}');
SELECT rc_state('rc_q');
SELECT actor, detail FROM dlq.events
 WHERE queue = 'rc_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;
-- New messages follow them (dlq_store's own statement classifies).
SELECT dlq_store('rc_q', '{"n": 5}', 'e', sqlstate => '40001') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 6}', 'e', sqlstate => '23505') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 7}', 'e', sqlstate => '40P01', dedup_key => 'k') IS NOT NULL AS stored;
-- A deduplicated failure takes the class of its latest SQLSTATE; its
-- retry stays scheduled (the worker's step drops it when due), and one
-- that waited is scheduled once a retryable failure folds into it.
SELECT dlq_store('rc_q', '{"n": 7}', 'e', sqlstate => '40001', dedup_key => 'k') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 8}', 'e', sqlstate => '42P01', dedup_key => 'k2') IS NOT NULL AS stored;
SELECT dlq_store('rc_q', '{"n": 8}', 'e', sqlstate => '40P01', dedup_key => 'k2') IS NOT NULL AS stored;
SELECT rc_state('rc_q');
-- A code in one list may narrow a class of the other.
SELECT transient_sqlstates, permanent_sqlstates
  FROM dlq_configure('rc_q', permanent_sqlstates => '{23503,40001}');
SELECT rc_state('rc_q');
-- An empty array clears a list; the built-in classes apply again.
SELECT transient_sqlstates, permanent_sqlstates
  FROM dlq_configure('rc_q', transient_sqlstates => '{}', permanent_sqlstates => '{}');
SELECT rc_state('rc_q');
SELECT detail FROM dlq.events
 WHERE queue = 'rc_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;

-- Replaying and review messages are reclassified too; closed ones keep
-- the class they closed with.
SELECT (dlq_configure('rc_open', require_listener => false, max_attempts => 1)).queue;
SELECT dlq_store('rc_open', jsonb_build_object('n', i), 'e', sqlstate => '23503') IS NOT NULL AS stored
  FROM generate_series(1, 4) i;
SELECT dlq_reprocess(ARRAY[dlq_test.id('rc_open', 1), dlq_test.id('rc_open', 2)]) ->> 'replayed' AS replayed;
SELECT dlq_nack(dlq_test.id('rc_open', 2), 'failed again', '23503');
SELECT dlq_resolve(ARRAY[dlq_test.id('rc_open', 3)]) ->> 'resolved' AS resolved;
SELECT (dlq_configure('rc_open', transient_sqlstates => '{23503}')).queue;
SELECT string_agg(format('%s:%s:%s', payload ->> 'n', status, error_class), ' ' ORDER BY message_id)
  FROM dlq.messages WHERE queue = 'rc_open';

-- A transient-only auto_retry queue in one session: dlq_store's plans
-- (src/store.c) give each message the schedule its class calls for,
-- whatever came before.
SELECT (dlq_configure('rc_plan', auto_retry => true, retry_base => '10 min')).queue;
SELECT dlq_store('rc_plan', '{"n": 1}', 'e', sqlstate => '23503') IS NOT NULL AS stored;
SELECT dlq_store('rc_plan', '{"n": 2}', 'e', sqlstate => '40001') IS NOT NULL AS stored;
SELECT dlq_store('rc_plan', '{"n": 3}', 'e') IS NOT NULL AS stored;
SELECT dlq_store('rc_plain', '{"n": 1}', 'e', sqlstate => '40001') IS NOT NULL AS stored;
SELECT dlq_store('rc_plan', '{"n": 4}', 'e', sqlstate => '53300') IS NOT NULL AS stored;
SELECT (dlq_configure('rc_plan', auto_retry => false)).queue;
SELECT dlq_store('rc_plan', '{"n": 5}', 'e', sqlstate => '23503') IS NOT NULL AS stored;
SELECT dlq_store('rc_plan', '{"n": 6}', 'e', sqlstate => '40001') IS NOT NULL AS stored;
SELECT rc_state('rc_plan'), rc_state('rc_plain');

-- Validation: every bad value is refused before anything is written.
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', retry_on => 'ALL')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', retry_on => '')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', retry_on => E'all\n')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{40001,4}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{40p01}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{400}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{400011}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => ARRAY[E'4000\x01'])$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => ARRAY[U&'4000\00E9'])$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => ARRAY[repeat('4', 1000000)])$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => ARRAY['40001', NULL])$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{{40001},{40P01}}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{40001,57014,40001}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', permanent_sqlstates =>
    ARRAY(SELECT lpad(i::text, 5, '0') FROM generate_series(1, 101) i))$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', permanent_sqlstates =>
    ARRAY(SELECT lpad(i::text, 5, '0') FROM generate_series(1, 1000000) i))$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_q', transient_sqlstates => '{23,40001}',
                                           permanent_sqlstates => '{40001}')$$);
-- 100 entries are allowed.
SELECT cardinality(permanent_sqlstates) FROM dlq_configure('rc_v', permanent_sqlstates =>
    ARRAY(SELECT lpad(i::text, 5, '0') FROM generate_series(1, 100) i));
-- One list against the other as stored: locked and checked too.
SELECT (dlq_configure('rc_v', permanent_sqlstates => '{23503}')).permanent_sqlstates;
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', transient_sqlstates => '{23503}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', archive_retention => '-1 day')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', archive_retention => '101 years')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', archive_retention => '36601 days')$$);
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', max_messages => -1)$$);
-- Nothing of the refused calls was written.
SELECT retry_on, transient_sqlstates, permanent_sqlstates, archive_retention, max_messages
  FROM dlq.queues WHERE queue = 'rc_v';
-- archive_retention 0 (purge at once), max_messages set and cleared with 0.
SELECT archive_retention, max_messages
  FROM dlq_configure('rc_v', archive_retention => '0', max_messages => 10);
SELECT archive_retention, max_messages FROM dlq_configure('rc_v', max_messages => 0);
SELECT archive_retention FROM dlq_configure('rc_v', archive_retention => '100 years');
SELECT detail FROM dlq.events
 WHERE queue = 'rc_v' AND kind = 'configured' ORDER BY event_id DESC LIMIT 3;

-- Who may configure: operators; not readers or writers (42501).
SET ROLE rc_operator;
SELECT retry_on, max_messages FROM dlq_configure('rc_v', retry_on => 'all', max_messages => 5);
RESET ROLE;
SELECT actor FROM dlq.events WHERE queue = 'rc_v' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;
SET ROLE rc_reader;
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', retry_on => 'transient')$$);
SELECT dlq_test.err($$SELECT dlq.sqlstate_class('23503', NULL, NULL)$$);
SELECT dlq_test.err($$SELECT * FROM dlq.worker_retry_due(10)$$);
RESET ROLE;
SET ROLE rc_writer;
SELECT dlq_test.err($$SELECT dlq_configure('rc_v', max_messages => 1)$$);
RESET ROLE;
SELECT retry_on, max_messages FROM dlq.queues WHERE queue = 'rc_v';

-- A nack and a failed re-apply classify by the queue's lists too, not only dlq_store.
SELECT (dlq_configure('rc_nack', require_listener => false, transient_sqlstates => '{23503}')).queue;
SELECT dlq_store('rc_nack', '{}', 'first', sqlstate => '22001') IS NOT NULL AS stored;
SELECT (dlq_reprocess_all('rc_nack'))->>'notified' AS handed;
SELECT count(*) FROM dlq_claim('rc_nack', 10);
SELECT dlq_nack(m.message_id, 'foreign key again', '23503')
  FROM dlq.messages m WHERE m.queue = 'rc_nack';
SELECT sqlstate, error_class FROM dlq.messages WHERE queue = 'rc_nack';

DROP FUNCTION rc_state(text);
DROP FUNCTION rc_due();
DELETE FROM dlq.messages WHERE queue LIKE 'rc\_%';
DELETE FROM dlq.events WHERE queue LIKE 'rc\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'rc\_%';
DROP ROLE rc_operator, rc_reader, rc_writer;
