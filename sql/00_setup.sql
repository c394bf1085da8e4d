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
GRANT USAGE ON SCHEMA dlq_test TO PUBLIC;
GRANT EXECUTE ON FUNCTION dlq_test.err(text), dlq_test.try(text) TO PUBLIC;
SELECT dlq_test.err('SELECT 1/0');
SELECT dlq_test.err('SELECT 1');
SELECT dlq_test.try('SELECT 1/0');
SELECT dlq_test.try('SELECT 1');
