-- dlq_configure(queue, components => text[]) (DESIGN 7.2): once a queue
-- lists its components, dlq_store and capture refuse any other component
-- with 22023 and change nothing; a NULL component is still accepted; an
-- empty array accepts any component again.
\set VERBOSITY default
CREATE ROLE sc_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE sc_reader LOGIN IN ROLE dlq_reader;
GRANT CREATE ON SCHEMA public TO sc_writer;
-- sc_count(queue): the messages of a queue, and the highest id.
CREATE FUNCTION sc_count(q text) RETURNS text LANGUAGE sql AS $$
    SELECT count(*) || ' messages, up to n = ' || max((payload ->> 'n')::int)
      FROM dlq.messages WHERE queue = q
$$;

-- A new queue accepts any component.
SELECT dlq_store('sc_q', '{"n": 1}', 'e', component => 'anything') IS NOT NULL AS stored;
SELECT components FROM dlq_configure('sc_q', components => '{api,loader}');
SELECT detail FROM dlq.events WHERE queue = 'sc_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;
SELECT dlq_store('sc_q', '{"n": 2}', 'e', component => 'api') IS NOT NULL AS stored;
SELECT dlq_store('sc_q', '{"n": 3}', 'e', component => 'loader', dedup_key => 'k') IS NOT NULL AS stored;
SELECT dlq_store('sc_q', '{"n": 4}', 'e') IS NOT NULL AS stored_without_component;
SELECT sc_count('sc_q');

-- Any other component is refused, with or without dedup_key, changing nothing.
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 5}', 'e', component => 'billing')$$);
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 5}', 'e', component => 'API')$$);
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 5}', 'e', component => 'api ')$$);
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 5}', 'e', component => 'billing', dedup_key => 'k')$$);
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 5}', 'e', component => 'billing', sqlstate => '40001')$$);
SELECT sc_count('sc_q');
SELECT occurrences FROM dlq.messages WHERE queue = 'sc_q' AND dedup_key = 'k';

-- The same for a writer, and on an auto_retry queue (dlq_store's other plan).
SET ROLE sc_writer;
SELECT dlq_store('sc_q', '{"n": 6}', 'e', component => 'loader') IS NOT NULL AS stored;
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 7}', 'e', component => 'x')$$);
RESET ROLE;
SELECT (dlq_configure('sc_q', auto_retry => true)).auto_retry;
SELECT dlq_store('sc_q', '{"n": 8}', 'e', component => 'api', sqlstate => '40001') IS NOT NULL AS stored;
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 9}', 'e', component => 'x', sqlstate => '40001')$$);
SELECT (dlq_configure('sc_q', auto_retry => false)).auto_retry;
SELECT sc_count('sc_q');

-- An empty array accepts any component again; NULL keeps the list.
SELECT components FROM dlq_configure('sc_q', max_attempts => 3);
SELECT components FROM dlq_configure('sc_q', components => '{}');
SELECT dlq_store('sc_q', '{"n": 10}', 'e', component => 'billing') IS NOT NULL AS stored;
SELECT detail FROM dlq.events WHERE queue = 'sc_q' AND kind = 'configured' ORDER BY event_id DESC LIMIT 1;

-- Hostile lists: each refused before anything is written.
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY['api', NULL])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY['api', ''])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY[E'ap\ti'])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY[U&'api\0085'])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY[repeat('c', 64)])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => ARRAY[repeat('c', 1000000)])$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => '{api,loader,api}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => '{{api},{loader}}')$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components =>
    ARRAY(SELECT 'c' || i FROM generate_series(1, 1001) i))$$);
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components =>
    ARRAY(SELECT 'c' || i FROM generate_series(1, 1000000) i))$$);
SELECT components FROM dlq.queues WHERE queue = 'sc_q';
-- 1000 components of 63 bytes are allowed, and a refused store names the queue.
SELECT cardinality(components) FROM dlq_configure('sc_q', components =>
    ARRAY(SELECT lpad(i::text, 63, 'c') FROM generate_series(1, 1000) i));
SELECT dlq_store('sc_q', '{"n": 11}', 'e', component => lpad('1000', 63, 'c')) IS NOT NULL AS stored;
SELECT dlq_test.err($$SELECT dlq_store('sc_q', '{"n": 12}', 'e', component => lpad('1001', 63, 'c'))$$);
-- Readers and writers cannot set components (42501).
SET ROLE sc_reader;
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => '{}')$$);
SET ROLE sc_writer;
SELECT dlq_test.err($$SELECT dlq_configure('sc_q', components => '{}')$$);
RESET ROLE;
SELECT cardinality(components) FROM dlq.queues WHERE queue = 'sc_q';

-- Capture: the trigger's component is checked when its diverted rows are
-- written (at the end of the statement); a queue that does not list it
-- fails the statement, good rows included.  Also, the captured rows'
-- error_class follows the queue's overrides.
SET ROLE sc_writer;
CREATE TABLE sc_items (id int PRIMARY KEY, qty int NOT NULL);
CREATE TRIGGER sc_capture BEFORE INSERT OR UPDATE ON sc_items
    FOR EACH ROW EXECUTE FUNCTION dlq_capture('sc_cap', 'loader');
RESET ROLE;
SELECT components, transient_sqlstates
  FROM dlq_configure('sc_cap', components => '{api}', transient_sqlstates => '{23502}');
SET ROLE sc_writer;
INSERT INTO sc_items VALUES (1, 1), (2, NULL);
SELECT count(*) AS rows_after_refusal FROM sc_items;
RESET ROLE;
SELECT components FROM dlq_configure('sc_cap', components => '{api,loader}');
SET ROLE sc_writer;
INSERT INTO sc_items VALUES (1, 1), (2, NULL), (1, 3);
SELECT count(*) AS rows_loaded FROM sc_items;
RESET ROLE;
SELECT component, sqlstate, error_class FROM dlq.messages WHERE queue = 'sc_cap' ORDER BY message_id;

DROP TABLE sc_items;
DROP FUNCTION sc_count(text);
DELETE FROM dlq.messages WHERE queue LIKE 'sc\_%';
DELETE FROM dlq.events WHERE queue LIKE 'sc\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sc\_%';
REVOKE CREATE ON SCHEMA public FROM sc_writer;
DROP ROLE sc_writer, sc_reader;
