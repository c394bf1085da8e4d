-- Helpers shared by the replay regression tests (sql/40_*, sql/41_*); errors
-- go through dlq_test.try() from sql/00_setup.sql.
-- st(queue): every message of a queue as n:status:attempts, by id.
CREATE FUNCTION pg_temp.st(q text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(format('%s:%s:%s', payload->>'n', status, attempts), ' ' ORDER BY message_id)
      FROM dlq.messages WHERE queue = q
$$;
-- id(queue, n): the id of message n of a queue.
CREATE FUNCTION pg_temp.id(q text, n int) RETURNS bigint LANGUAGE sql AS $$
    SELECT message_id FROM dlq.messages WHERE queue = q AND payload->>'n' = n::text
$$;
