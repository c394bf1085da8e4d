-- Helpers for the other regression files (they share this database).
-- dlq_test.err(stmt) runs a statement and returns its SQLSTATE with the
-- message, detail and hint, so that expected outputs pin the SQLSTATE;
-- dlq_test.try(stmt) returns 'ok' or just 'SQLSTATE: message'.  The failing
-- statement is rolled back with the function's subtransaction, as a client
-- would see it.
CREATE SCHEMA dlq_test;
CREATE FUNCTION dlq_test.err(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
    hnt text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg
        || CASE WHEN det <> '' THEN E'\nDETAIL: ' || det ELSE '' END
        || CASE WHEN hnt <> '' THEN E'\nHINT: ' || hnt ELSE '' END;
END $$;
CREATE FUNCTION dlq_test.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- dlq_test.st(queue): every message of a queue as n:status:attempts, by id;
-- dlq_test.id(queue, n): the id of message n of a queue (30_replay, 40_consumer).
CREATE FUNCTION dlq_test.st(q text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(format('%s:%s:%s', payload->>'n', status, attempts), ' ' ORDER BY message_id)
      FROM dlq.messages WHERE queue = q
$$;
CREATE FUNCTION dlq_test.id(q text, n int) RETURNS bigint LANGUAGE sql AS $$
    SELECT message_id FROM dlq.messages WHERE queue = q AND payload->>'n' = n::text
$$;
GRANT USAGE ON SCHEMA dlq_test TO PUBLIC;
GRANT EXECUTE ON FUNCTION dlq_test.err(text), dlq_test.try(text) TO PUBLIC;
SELECT dlq_test.err('SELECT 1/0');
SELECT dlq_test.err('SELECT 1');
SELECT dlq_test.try('SELECT 1/0');
SELECT dlq_test.try('SELECT 1');
