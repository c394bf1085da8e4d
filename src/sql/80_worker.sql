/*
 * Background worker maintenance (src/worker.c).  Each step is one bounded
 * batch: the worker calls it in a transaction of its own, over and over
 * until a batch comes back short.  Rows are taken with SKIP LOCKED, so a
 * message an operator is working on is simply left for the next round.
 *
 * The steps are SQL so that the worker, a test, or an operator without
 * shared_preload_libraries (from cron) all run the very same statements.
 * They are SECURITY INVOKER and granted to nobody: only the extension owner
 * (as which the worker runs them) and superusers may call them.
 */

/* Pending messages past expires_at become expired; one 'expired' event per queue. */
CREATE FUNCTION dlq.worker_expire(batch_size integer, actor text DEFAULT current_user)
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        UPDATE dlq.messages m
           SET status = 'expired', resolved_at = now(), next_retry_at = NULL
         WHERE m.ctid = ANY (ARRAY(
                   SELECT ctid FROM dlq.messages
                    WHERE status = 'pending' AND expires_at <= now()
                    ORDER BY expires_at
                    LIMIT batch_size
                      FOR UPDATE SKIP LOCKED))
        RETURNING m.queue, m.message_id
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids)
        SELECT actor, 'expired', queue, count(*),
               CASE WHEN count(*) <= 100 THEN array_agg(message_id ORDER BY message_id) END
          FROM done GROUP BY queue
    )
    SELECT count(*) FROM done
$$;
COMMENT ON FUNCTION dlq.worker_expire(integer, text) IS
    'worker step: expire at most batch_size pending messages past expires_at; returns how many';

/* Resolved and expired messages past their queue's resolved_retention are deleted. */
CREATE FUNCTION dlq.worker_purge(batch_size integer, actor text DEFAULT current_user)
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM dlq.messages m
         WHERE m.ctid = ANY (ARRAY(
                   SELECT m.ctid
                     FROM dlq.messages m JOIN dlq.queues q ON q.queue = m.queue
                    WHERE m.status IN ('resolved', 'expired')
                      AND m.resolved_at <= now() - q.resolved_retention
                    ORDER BY m.resolved_at
                    LIMIT batch_size
                      FOR UPDATE OF m SKIP LOCKED))
        RETURNING m.queue, m.message_id, m.status
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
        SELECT actor, 'purged', queue, count(*),
               CASE WHEN count(*) <= 100 THEN array_agg(message_id ORDER BY message_id) END,
               jsonb_build_object('resolved', count(*) FILTER (WHERE status = 'resolved'),
                                  'expired', count(*) FILTER (WHERE status = 'expired'))
          FROM gone GROUP BY queue
    )
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION dlq.worker_purge(integer, text) IS
    'worker step: delete at most batch_size resolved/expired messages past their queue''s resolved_retention';

/* Audit events older than the retention are deleted; the deletion itself is audited. */
CREATE FUNCTION dlq.worker_purge_events(batch_size integer, older_than interval,
                                        actor text DEFAULT current_user)
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM dlq.events
         WHERE event_id IN (SELECT event_id FROM dlq.events
                             WHERE at < now() - older_than
                             ORDER BY at LIMIT batch_size)
        RETURNING 1
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, message_count, detail)
        SELECT actor, 'purged', 0,
               jsonb_build_object('events', count(*), 'older_than', older_than::text)
          FROM gone HAVING count(*) > 0
    )
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION dlq.worker_purge_events(integer, interval, text) IS
    'worker step: delete at most batch_size audit events older than older_than';

/*
 * Replaying messages abandoned for longer than timeout go back to pending, or
 * to review when their attempts are used up.  A claimed message counts as
 * abandoned timeout after its claim expired (until then a live consumer may
 * still claim it again); one nobody ever claimed, timeout after its replay
 * was requested: the request is in the audit trail under replay_request_id
 * (found through events_request_id, 40_replay.sql).
 * Only rows that are abandoned are locked, so consumers claiming fresh
 * replays with SKIP LOCKED never miss one because of the worker.  Looking
 * for unclaimed ones costs a probe per unclaimed replaying message, so the
 * worker does it less often than every naptime (with_unclaimed).
 */
CREATE FUNCTION dlq.worker_recover(batch_size integer, timeout interval,
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
     */
    FOR r IN SELECT message_id, queue, dedup_key, occurrences FROM dlq.messages
              WHERE message_id = ANY (picked) AND dedup_key IS NOT NULL ORDER BY message_id LOOP
        SELECT o.message_id INTO into_id FROM dlq.messages o
         WHERE o.queue = r.queue AND o.dedup_key = r.dedup_key
           AND o.status IN ('pending', 'review') AND o.message_id <> r.message_id
           FOR UPDATE;
        IF into_id IS NULL THEN
            /* the first of its key reopens now, so that later ones fold into it */
            UPDATE dlq.messages
               SET status = CASE WHEN attempts >= max_attempts THEN 'review' ELSE 'pending' END::dlq.status,
                   claimed_by = NULL, claim_expires_at = NULL
             WHERE message_id = r.message_id;
            CONTINUE;
        END IF;
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

/* Messages of unpaused auto_retry queues whose next_retry_at has come, grouped by queue. */
CREATE FUNCTION dlq.worker_retry_due(batch_size integer)
RETURNS TABLE (queue text, message_ids bigint[])
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.queue, array_agg(d.message_id ORDER BY d.message_id)
      FROM (SELECT m.queue, m.message_id
              FROM dlq.messages m JOIN dlq.queues q ON q.queue = m.queue
             WHERE m.status = 'pending' AND m.next_retry_at <= now()
               AND q.auto_retry AND NOT q.paused
             ORDER BY m.next_retry_at
             LIMIT batch_size) d
     GROUP BY d.queue
     ORDER BY d.queue
$$;
COMMENT ON FUNCTION dlq.worker_retry_due(integer) IS
    'worker step: pending messages of auto_retry queues due for a retry, at most batch_size, grouped by queue';

/*
 * A retry that could not even be requested (no live consumer, a replay
 * error) is put off by the next backoff step rather than tried again at
 * every naptime.
 */
CREATE FUNCTION dlq.worker_retry_defer(message_ids bigint[])
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    WITH later AS (
        UPDATE dlq.messages m
           SET next_retry_at = now() + dlq.retry_delay(q, m.attempts + 1)
          FROM dlq.queues q
         WHERE m.message_id = ANY (message_ids) AND q.queue = m.queue
           AND m.status = 'pending' AND m.next_retry_at <= now()
        RETURNING 1
    )
    SELECT count(*) FROM later
$$;
COMMENT ON FUNCTION dlq.worker_retry_defer(bigint[]) IS
    'worker step: push back next_retry_at of due messages whose retry could not be requested';

/*
 * Alerts: a queue whose depth (pending + replaying) reached its
 * alert_threshold, and that has not alerted within its alert_cooldown, gets
 * one NOTIFY on dlq_alerts and its last_alert_at set.  Alerts are not
 * audit events: they change no message, and the audit trail stays a record
 * of what was done to messages.  Queues in cooldown cost nothing; for the others
 * the depth is first counted only up to the threshold (an index-only range),
 * and counted in full only when it is reached.
 */
CREATE FUNCTION dlq.worker_alert()
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    /*
     * Depth comes from dlq.counts (kept at commit by the triggers of
     * 70_status.sql), not from counting a million index entries; the oldest
     * open message is the first entry of its queue's (queue, status,
     * message_id) range, written as a row comparison so that no plan walks
     * the primary key through other queues.
     */
    WITH depth AS (
        SELECT c.queue, sum(c.n) AS depth
          FROM dlq.counts c
         WHERE c.status IN ('pending', 'replaying')
         GROUP BY c.queue
    ), due AS (
        SELECT q.queue, q.alert_threshold, d.depth
          FROM dlq.queues q JOIN depth d ON d.queue = q.queue
         WHERE (q.last_alert_at IS NULL OR q.last_alert_at <= now() - q.alert_cooldown)
           AND d.depth >= q.alert_threshold
           FOR UPDATE OF q SKIP LOCKED
    ), alert AS (
        SELECT d.queue,
               jsonb_build_object(
                   'queue', d.queue,
                   'depth', d.depth,
                   'threshold', d.alert_threshold,
                   'severity', CASE WHEN d.depth >= 5 * d.alert_threshold THEN 'critical'
                                    ELSE 'warning' END,
                   'oldest_age_seconds',
                   floor(extract(epoch FROM now() - least(
                       (SELECT m.stored_at FROM dlq.messages m
                         WHERE (m.queue, m.status, m.message_id) > (d.queue, 'pending'::dlq.status, 0)
                           AND (m.queue, m.status) <= (d.queue, 'pending'::dlq.status)
                         ORDER BY m.queue, m.status, m.message_id LIMIT 1),
                       (SELECT m.stored_at FROM dlq.messages m
                         WHERE (m.queue, m.status, m.message_id) > (d.queue, 'replaying'::dlq.status, 0)
                           AND (m.queue, m.status) <= (d.queue, 'replaying'::dlq.status)
                         ORDER BY m.queue, m.status, m.message_id LIMIT 1))))::bigint) AS payload
          FROM due d
    ), mark AS (
        UPDATE dlq.queues q SET last_alert_at = now()
          FROM alert WHERE q.queue = alert.queue
    )
    SELECT count(pg_notify('dlq_alerts', payload::text)) FROM alert
$$;
COMMENT ON FUNCTION dlq.worker_alert() IS
    'worker step: NOTIFY dlq_alerts for every queue past its alert_threshold and out of its alert_cooldown';

/* The worker's heartbeat for this database, from shared memory. */
CREATE FUNCTION dlq.worker_status(
    OUT pid integer,
    OUT running boolean,
    OUT started_at timestamptz,
    OUT last_round_start timestamptz,
    OUT last_heartbeat timestamptz,
    OUT rounds bigint,
    OUT last_expired bigint,
    OUT last_purged bigint,
    OUT last_events_purged bigint,
    OUT last_recovered bigint,
    OUT last_retried bigint,
    OUT last_alerts bigint,
    OUT errors bigint,
    OUT last_error_at timestamptz,
    OUT last_error text)
RETURNS record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'dlq_worker_status';
COMMENT ON FUNCTION dlq.worker_status() IS
    'the background worker of this database: pid, heartbeat, what its last round did, errors; NULL when it has never run here';
GRANT EXECUTE ON FUNCTION dlq.worker_status() TO dlq_reader;
