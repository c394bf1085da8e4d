/*
 * dlq--1.0--1.1.sql: upgrade from 1.0 to 1.1.
 *
 * CREATE EXTENSION dlq installs 1.0 (dlq--1.0.sql, frozen) and runs this
 * script after it, so a fresh 1.1 and an updated 1.0 are the same schema
 * (tests/t/091_upgrade.pl compares them).  Every schema change of 1.1 goes
 * here, in the section of its concern; CHANGELOG.md says what each adds.
 */

\echo Use "ALTER EXTENSION dlq UPDATE TO '1.1'" to load this file. \quit

/* ---- Code map: C entry points of etl_* carry the dlq_ prefix ---- */



/* ---- Trust: binding queues to tables, detach, capture (attach.c, capture.c) ---- */



/* ---- Trust: replays run as a role that could write (replay.c, queue.c, worker) ---- */



/* ---- Trust: consumers and the store/nack race (consumer.c, store.c) ---- */

/*
 * dlq_nack (consumer.c) and the worker's recovery of abandoned replays both
 * reopen a replaying message unless another open message holds its
 * dedup_key, then fold into that one.  Between the check and the reopening
 * a concurrent dlq_store (or nack, or recovery) can commit a message with
 * the key: 1.0 then failed with a unique violation of messages_dedup, and
 * the worker's whole round with it.  Both now undo the reopening, look
 * again and fold.  dlq.worker_recover is 1.0's body with that loop; it also
 * skips (until the next round) a message whose key another transaction
 * holds past the worker's lock_timeout, where 1.0 failed the whole recovery:
 * any writer could stall it by keeping a dlq_store with that key open.
 */
CREATE OR REPLACE FUNCTION dlq.worker_recover(batch_size integer, timeout interval,
                                   actor text DEFAULT current_user,
                                   with_unclaimed boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    picked bigint[];
    r record;
    into_id bigint;
    folded bigint := 0;
    returned bigint;
    tries integer;
    conflict text;
BEGIN
    picked := ARRAY(
        SELECT s.message_id FROM dlq.messages s
         WHERE s.status = 'replaying'
           AND (s.claim_expires_at <= now() - timeout
                OR (with_unclaimed AND s.claim_expires_at IS NULL
                    AND EXISTS (SELECT 1 FROM dlq.events e
                                 WHERE e.request_id = s.replay_request_id
                                   AND e.at <= now() - timeout)))
         ORDER BY s.message_id
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED);

    /*
     * A message with a dedup_key whose key is meanwhile held by another open
     * (pending or review) message cannot go back to pending: it is folded
     * into that one, as dlq_nack does, and resolved with a "merged" event.
     * Going one by one also folds two returning messages with the same key.
     * A message that took the key after the check is found by looking again
     * once reopening this one fails on messages_dedup (issue 11, finding 7).
     * A key held by a transaction that stays open (a writer's uncommitted
     * dlq_store) past lock_timeout only puts this message off to the next
     * round.
     */
    FOR r IN SELECT message_id, queue, dedup_key, occurrences FROM dlq.messages
              WHERE message_id = ANY (picked) AND dedup_key IS NOT NULL ORDER BY message_id LOOP
        BEGIN
            tries := 0;
            LOOP
                SELECT o.message_id INTO into_id FROM dlq.messages o
                 WHERE o.queue = r.queue AND o.dedup_key = r.dedup_key
                   AND o.status IN ('pending', 'review') AND o.message_id <> r.message_id
                   FOR UPDATE;
                EXIT WHEN into_id IS NOT NULL;
                /* the first of its key reopens now, so that later ones fold into it */
                BEGIN
                    UPDATE dlq.messages
                       SET status = CASE WHEN attempts >= max_attempts THEN 'review' ELSE 'pending' END::dlq.status,
                           claimed_by = NULL, claim_expires_at = NULL
                     WHERE message_id = r.message_id;
                    EXIT;
                EXCEPTION WHEN unique_violation THEN
                    /*
                     * A dlq_store, dlq_nack or another recovery made a
                     * message with the key open after the SELECT above
                     * looked: undone, look again and fold into that one.
                     */
                    GET STACKED DIAGNOSTICS conflict = CONSTRAINT_NAME;
                    tries := tries + 1;
                    IF conflict IS DISTINCT FROM 'messages_dedup' THEN
                        RAISE;
                    END IF;
                    IF tries >= 100 OR current_setting('transaction_isolation') <> 'read committed' THEN
                        RAISE EXCEPTION 'could not serialize access due to a concurrent store of the same dedup_key'
                            USING ERRCODE = 'serialization_failure',
                                  DETAIL = format('Message %s could not go back to pending: another open message of queue "%s" took its dedup_key.',
                                                  r.message_id, r.queue),
                                  HINT = 'Retry the transaction.';
                    END IF;
                END;
            END LOOP;
            IF into_id IS NOT NULL THEN
                UPDATE dlq.messages SET occurrences = occurrences + r.occurrences, last_failed_at = now()
                 WHERE message_id = into_id;
                UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),
                       claimed_by = NULL, claim_expires_at = NULL
                 WHERE message_id = r.message_id;
                INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
                VALUES (actor, 'merged', r.queue, 1, ARRAY[r.message_id],
                        jsonb_build_object('into', into_id, 'reason', 'replay timed out'));
                picked := array_remove(picked, r.message_id);
                folded := folded + 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            /*
             * Another transaction holds the key (an open message being
             * changed, or a dlq_store of it not committed yet) for longer
             * than the worker's lock_timeout: this message stays replaying
             * until the next round instead of failing the recovery of every
             * other one.
             */
            picked := array_remove(picked, r.message_id);
        END;
    END LOOP;

    WITH back AS (
        UPDATE dlq.messages m
           SET status = CASE WHEN m.attempts >= m.max_attempts
                             THEN 'review' ELSE 'pending' END::dlq.status,
               claimed_by = NULL,
               claim_expires_at = NULL,
               next_retry_at = CASE WHEN q.auto_retry AND m.attempts < m.max_attempts
                                    THEN now() + dlq.retry_delay(q, m.attempts + 1) END
          FROM dlq.queues q
         WHERE m.message_id = ANY (picked)
           AND q.queue = m.queue
        RETURNING m.queue, m.message_id, m.status
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
        SELECT actor, 'timed_out', queue, count(*),
               CASE WHEN count(*) <= 100 THEN array_agg(message_id ORDER BY message_id) END,
               jsonb_build_object('pending', count(*) FILTER (WHERE status = 'pending'),
                                  'review', count(*) FILTER (WHERE status = 'review'),
                                  'timeout', timeout::text)
          FROM back GROUP BY queue
    )
    SELECT count(*) INTO returned FROM back;
    RETURN returned + folded;
END
$$;
COMMENT ON FUNCTION dlq.worker_recover(integer, interval, text, boolean) IS
    'worker step: return at most batch_size replaying messages abandoned for longer than timeout to pending (or review)';



/* ---- Limits: sizes, intervals, names (util.c and every caller) ---- */



/* ---- DROP EXTENSION keeps messages unless told otherwise ---- */



/* ---- Privileges: nothing new reaches PUBLIC (keep this section last) ---- */
DO $grants$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_depend d ON d.objid = p.oid AND d.classid = 'pg_catalog.pg_proc'::regclass
        JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_extension'::regclass
        WHERE e.extname = 'dlq' AND d.deptype = 'e'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$grants$;
