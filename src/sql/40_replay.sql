/* Replay lifecycle, operator side (src/replay.c, src/queue.c) */

CREATE FUNCTION @extschema@.dlq_reprocess(message_ids bigint[], force boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_reprocess';
COMMENT ON FUNCTION @extschema@.dlq_reprocess(bigint[], boolean) IS
    'replay messages: re-apply captured rows, or hand them to consumers with one NOTIFY per queue; force redrives review messages';

CREATE FUNCTION @extschema@.dlq_reprocess_all(
    queue text,
    component text DEFAULT NULL,
    max_messages integer DEFAULT NULL,
    force boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_reprocess_all';
COMMENT ON FUNCTION @extschema@.dlq_reprocess_all(text, text, integer, boolean) IS
    'replay every pending message of a queue (and review ones with force), oldest first, in bounded batches';

CREATE FUNCTION @extschema@.dlq_discard(message_ids bigint[])
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_discard';
COMMENT ON FUNCTION @extschema@.dlq_discard(bigint[]) IS
    'delete messages for good (not replaying ones); audited';

CREATE FUNCTION @extschema@.dlq_discard_all(
    queue text,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    older_than interval DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_discard_all';
COMMENT ON FUNCTION @extschema@.dlq_discard_all(text, text, text, interval) IS
    'delete every message of a queue in one status, in bounded batches; audited';

CREATE FUNCTION @extschema@.dlq_resolve(message_ids bigint[], note text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_resolve';
COMMENT ON FUNCTION @extschema@.dlq_resolve(bigint[], text) IS
    'close open messages without replay; audited with the note';

CREATE FUNCTION @extschema@.dlq_configure(
    queue text,
    max_attempts integer DEFAULT NULL,
    retention interval DEFAULT NULL,
    resolved_retention interval DEFAULT NULL,
    replay_target regclass DEFAULT NULL,
    channel text DEFAULT NULL,
    require_listener boolean DEFAULT NULL,
    auto_retry boolean DEFAULT NULL,
    retry_base interval DEFAULT NULL,
    retry_factor double precision DEFAULT NULL,
    retry_max interval DEFAULT NULL,
    alert_threshold bigint DEFAULT NULL,
    alert_cooldown interval DEFAULT NULL)
RETURNS dlq.queues
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_configure';
COMMENT ON FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
    boolean, boolean, interval, double precision, interval, bigint, interval) IS
    'change the named settings of a queue (NULL keeps one), creating it if new; replay_target => 0 clears it';

CREATE FUNCTION @extschema@.dlq_pause(queue text)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_pause';
COMMENT ON FUNCTION @extschema@.dlq_pause(text) IS
    'refuse replays of a queue (SQLSTATE 55000) until dlq_resume';

CREATE FUNCTION @extschema@.dlq_resume(queue text)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_resume';
COMMENT ON FUNCTION @extschema@.dlq_resume(text) IS
    'allow replays of a paused queue again';

/* History: events that name the message, and those of its last replay request. */
CREATE INDEX events_request_id ON dlq.events (request_id) WHERE request_id IS NOT NULL;

CREATE FUNCTION @extschema@.dlq_history(message_id bigint)
RETURNS SETOF dlq.events
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.* FROM dlq.events e
     WHERE e.message_ids OPERATOR(pg_catalog.@>) ARRAY[$1]
    UNION
    SELECT e.* FROM dlq.events e JOIN dlq.messages m ON m.replay_request_id = e.request_id
     WHERE m.message_id = $1 AND e.message_ids IS NULL
    ORDER BY 1
$$;
COMMENT ON FUNCTION @extschema@.dlq_history(bigint) IS
    'audit events of one message: those naming it, and those of its last replay request';

GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_reprocess(bigint[], boolean),
    @extschema@.dlq_reprocess_all(text, text, integer, boolean),
    @extschema@.dlq_discard(bigint[]),
    @extschema@.dlq_discard_all(text, text, text, interval),
    @extschema@.dlq_resolve(bigint[], text),
    @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
        boolean, boolean, interval, double precision, interval, bigint, interval),
    @extschema@.dlq_pause(text),
    @extschema@.dlq_resume(text)
    TO dlq_operator;
GRANT EXECUTE ON FUNCTION @extschema@.dlq_history(bigint) TO dlq_reader;
