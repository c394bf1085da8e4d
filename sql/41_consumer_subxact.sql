-- A dlq_ack (or dlq_resolve, dlq_claim, ...) whose statement fails inside
-- the subtransaction that retries moved messages (dlq_execute_kept_moved)
-- leaves the caller's own subtransaction intact: a PL/pgSQL EXCEPTION block
-- catches the error and goes on, and nothing changed.
SELECT (dlq_configure('cs_q', require_listener => false)).queue;
SELECT count(dlq_store('cs_q', jsonb_build_object('n', i), 'failed')) FROM generate_series(1, 3) i;
SELECT dlq_reprocess_all('cs_q') ->> 'replayed' AS replayed;
SELECT count(*) AS claimed FROM dlq_claim('cs_q', 10);

-- A trigger of the user's that fails every close of this queue.
CREATE FUNCTION pg_temp.cs_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.queue = 'cs_q' AND NEW.status = 'resolved' THEN
        RAISE EXCEPTION 'cs_q may not be closed now';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER cs_refuse BEFORE UPDATE ON dlq.messages
    FOR EACH ROW EXECUTE FUNCTION pg_temp.cs_refuse();

DO $$
DECLARE
    ids bigint[] := ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'cs_q' ORDER BY 1);
BEGIN
    BEGIN
        PERFORM dlq_ack(ids);
        RAISE NOTICE 'not reached';
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'caught: %', SQLERRM;
    END;
    BEGIN
        PERFORM dlq_resolve(ids);
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'caught again: %', SQLERRM;
    END;
    RAISE NOTICE 'still replaying: %',
        (SELECT count(*) FROM dlq.messages WHERE queue = 'cs_q' AND status = 'replaying');
END $$;

DROP TRIGGER cs_refuse ON dlq.messages;
SELECT dlq_ack(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'cs_q')) AS acked_after;
SELECT status, count(*) FROM dlq.messages WHERE queue = 'cs_q' GROUP BY 1;
