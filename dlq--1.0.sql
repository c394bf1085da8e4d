/* dlq--1.0.sql: the install script of version 1.0, frozen as released (5613e00). Never edit it: changes go into the upgrade scripts. */

\echo Use "CREATE EXTENSION dlq" to load this file. \quit
/*
 * Storage: schema dlq with queues, messages and the audit trail, and the
 * three roles.  Users never write these tables directly; the API functions
 * do, as the extension owner.
 */

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['dlq_writer', 'dlq_reader', 'dlq_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('dlq_operator', 'dlq_reader', 'MEMBER') THEN
        GRANT dlq_reader TO dlq_operator;
    END IF;
END
$roles$;

CREATE SCHEMA dlq;
COMMENT ON SCHEMA dlq IS 'storage of the dlq extension: queues, messages and the audit trail';
GRANT USAGE ON SCHEMA dlq TO dlq_writer, dlq_reader, dlq_operator;

CREATE TYPE dlq.status AS ENUM ('pending', 'replaying', 'resolved', 'review', 'expired');
COMMENT ON TYPE dlq.status IS 'state of a message, see README.md "States"';

CREATE TABLE dlq.queues (
    queue               text PRIMARY KEY
                        CHECK (octet_length(queue) BETWEEN 1 AND 63 AND queue !~ '[[:cntrl:]]'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    paused              boolean NOT NULL DEFAULT false,
    max_attempts        integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 1000),
    retention           interval NOT NULL DEFAULT '30 days' CHECK (retention > '0'),
    resolved_retention  interval NOT NULL DEFAULT '7 days' CHECK (resolved_retention >= '0'),
    replay_target       regclass,
    channel             text NOT NULL
                        CHECK (octet_length(channel) BETWEEN 1 AND 63),
    require_listener    boolean NOT NULL DEFAULT true,
    auto_retry          boolean NOT NULL DEFAULT false,
    retry_base          interval NOT NULL DEFAULT '1 min' CHECK (retry_base > '0'),
    retry_factor        double precision NOT NULL DEFAULT 2 CHECK (retry_factor >= 1),
    retry_max           interval NOT NULL DEFAULT '1 hour' CHECK (retry_max > '0'),
    alert_threshold     bigint NOT NULL DEFAULT 100 CHECK (alert_threshold > 0),
    alert_cooldown      interval NOT NULL DEFAULT '15 min' CHECK (alert_cooldown >= '0'),
    last_alert_at       timestamptz,
    last_replay_at      timestamptz
);
COMMENT ON TABLE dlq.queues IS 'one row per queue (a pipeline or stage that fails into the DLQ) and its settings';

CREATE TABLE dlq.messages (
    message_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               text NOT NULL,
    component           text,
    status              dlq.status NOT NULL DEFAULT 'pending',
    payload             jsonb NOT NULL,
    error               text NOT NULL,
    sqlstate            char(5),
    error_class         text NOT NULL CHECK (error_class IN ('transient', 'permanent')),
    error_detail        jsonb,
    metadata            jsonb,
    dedup_key           text,
    occurrences         integer NOT NULL DEFAULT 1,
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL,
    stored_at           timestamptz NOT NULL DEFAULT now(),
    last_failed_at      timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz,
    next_retry_at       timestamptz,
    replay_request_id   uuid,
    claimed_by          text,
    claim_expires_at    timestamptz,
    resolved_at         timestamptz,
    source_relation     regclass,
    operation           text CHECK (operation IN ('INSERT', 'UPDATE'))
);
COMMENT ON TABLE dlq.messages IS 'one row per failed message or captured row; message_id is the keyset cursor';

/* Keyset listing: equality prefix, then message_id, so every page is a bounded index range. */
CREATE INDEX messages_queue_status_id ON dlq.messages (queue, status, message_id);
CREATE INDEX messages_queue_status_component_id ON dlq.messages (queue, status, component, message_id);
CREATE INDEX messages_queue_id ON dlq.messages (queue, message_id);
CREATE INDEX messages_status_id ON dlq.messages (status, message_id);
/* dedup_key folds repeated failures into one open message; ON CONFLICT relies on this index. */
CREATE UNIQUE INDEX messages_dedup ON dlq.messages (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review');
/* Worker scans, each limited to the messages it can act on. */
CREATE INDEX messages_pending_expiry ON dlq.messages (expires_at) WHERE status = 'pending';
CREATE INDEX messages_replaying_claim ON dlq.messages (claim_expires_at) WHERE status = 'replaying';
CREATE INDEX messages_retry_due ON dlq.messages (next_retry_at) WHERE status = 'pending' AND next_retry_at IS NOT NULL;
CREATE INDEX messages_closed ON dlq.messages (resolved_at) WHERE status IN ('resolved', 'expired');

CREATE TYPE dlq.event_kind AS ENUM (
    'stored', 'replay_requested', 'replayed', 'replay_failed', 'acked', 'nacked',
    'resolved', 'discarded', 'expired', 'redriven', 'configured', 'paused', 'resumed',
    'purged', 'timed_out', 'retried', 'alert', 'merged');

CREATE TABLE dlq.events (
    event_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                  timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor               text NOT NULL,
    kind                dlq.event_kind NOT NULL,
    queue               text,
    request_id          uuid,
    message_count       bigint NOT NULL DEFAULT 0,
    message_ids         bigint[],
    detail              jsonb
);
COMMENT ON TABLE dlq.events IS 'append-only audit trail: who did what to which messages, when and in which request';
CREATE INDEX events_at ON dlq.events (at);
CREATE INDEX events_queue_at ON dlq.events (queue, at);
CREATE INDEX events_message_ids ON dlq.events USING gin (message_ids);

/*
 * Delay before automatic retry number n (n >= 1) of a message of an
 * auto_retry queue: retry_base * retry_factor^(n-1), with +-10% jitter so
 * that messages that failed together do not retry together, capped at
 * retry_max.  Used by dlq_store, replay failures and the worker.
 */
CREATE FUNCTION dlq.retry_delay(q dlq.queues, n integer, jitter double precision DEFAULT random())
RETURNS interval
LANGUAGE sql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT least(q.retry_max,
                 q.retry_base * power(q.retry_factor, greatest(n - 1, 0))::float8
                              * (0.9 + 0.2 * jitter))
$$;
COMMENT ON FUNCTION dlq.retry_delay(dlq.queues, integer, double precision) IS
    'backoff before retry n of an auto_retry queue: retry_base * retry_factor^(n-1), +-10% jitter, capped at retry_max';

SELECT pg_catalog.pg_extension_config_dump('dlq.queues', '');
SELECT pg_catalog.pg_extension_config_dump('dlq.messages', '');
SELECT pg_catalog.pg_extension_config_dump('dlq.events', '');
SELECT pg_catalog.pg_extension_config_dump('dlq.messages_message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('dlq.events_event_id_seq', '');

/* Nothing to PUBLIC; readers may read, nobody but the owner writes. */
REVOKE ALL ON ALL TABLES IN SCHEMA dlq FROM PUBLIC;
GRANT SELECT ON dlq.queues, dlq.messages, dlq.events TO dlq_reader;

/* The row type every listing function returns. */
CREATE VIEW dlq.message AS SELECT * FROM dlq.messages;
COMMENT ON VIEW dlq.message IS 'row type returned by dlq_list, dlq_get and dlq_claim';
REVOKE ALL ON dlq.message FROM PUBLIC;
/* dlq_store (src/store.c) */

CREATE FUNCTION @extschema@.dlq_store(
    queue text,
    payload jsonb,
    error text,
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    error_detail jsonb DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    dedup_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_store';
COMMENT ON FUNCTION @extschema@.dlq_store(text, jsonb, text, text, text, jsonb, jsonb, text) IS
    'keep a failed message with its error context; returns its message_id';
/* dlq_list, dlq_list_page, dlq_get (src/list.c) */

CREATE FUNCTION @extschema@.dlq_list(
    queue text DEFAULT NULL,
    cursor bigint DEFAULT NULL,
    batch_size integer DEFAULT 100,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    newest_first boolean DEFAULT false)
RETURNS SETOF dlq.message
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 100
AS 'MODULE_PATHNAME', 'dlq_list';
COMMENT ON FUNCTION @extschema@.dlq_list(text, bigint, integer, text, text, text, boolean) IS
    'one keyset page of messages after cursor (before it when newest_first); non-destructive';

CREATE FUNCTION @extschema@.dlq_list_page(
    queue text DEFAULT NULL,
    cursor bigint DEFAULT NULL,
    batch_size integer DEFAULT 100,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    newest_first boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_list_page';
COMMENT ON FUNCTION @extschema@.dlq_list_page(text, bigint, integer, text, text, text, boolean) IS
    'the page of dlq_list as {"messages": [...], "next_cursor": id|null, "has_more": bool}';

CREATE FUNCTION @extschema@.dlq_get(message_id bigint)
RETURNS dlq.message
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_get';
COMMENT ON FUNCTION @extschema@.dlq_get(bigint) IS
    'one message with its full error context; SQLSTATE 02000 when it does not exist';
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
/* Replay lifecycle, consumer side (src/consumer.c) */

CREATE FUNCTION @extschema@.dlq_listen(queue text)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_listen';
COMMENT ON FUNCTION @extschema@.dlq_listen(text) IS
    'LISTEN on the queue''s channel and register as its live consumer until the session ends; returns the channel';

CREATE FUNCTION @extschema@.dlq_claim(
    queue text,
    batch_size integer DEFAULT 100,
    visibility interval DEFAULT '5 min')
RETURNS SETOF dlq.message
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 100
AS 'MODULE_PATHNAME', 'dlq_claim';
COMMENT ON FUNCTION @extschema@.dlq_claim(text, integer, interval) IS
    'lease up to batch_size replaying messages nobody holds for the visibility interval (SKIP LOCKED)';

CREATE FUNCTION @extschema@.dlq_ack(message_ids bigint[])
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_ack';
COMMENT ON FUNCTION @extschema@.dlq_ack(bigint[]) IS
    'resolve replaying messages a consumer has processed; returns how many were';

CREATE FUNCTION @extschema@.dlq_nack(
    message_id bigint,
    error text,
    sqlstate text DEFAULT NULL,
    retry_in interval DEFAULT NULL)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_nack';
COMMENT ON FUNCTION @extschema@.dlq_nack(bigint, text, text, interval) IS
    'end a replay with a failure: back to pending, or review at max_attempts; returns the new status';

GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_listen(text),
    @extschema@.dlq_claim(text, integer, interval),
    @extschema@.dlq_ack(bigint[]),
    @extschema@.dlq_nack(bigint, text, text, interval)
    TO dlq_operator;
/* Failed-row capture: dlq_capture, dlq_attach, dlq_detach (src/capture.c, src/attach.c) */

CREATE FUNCTION @extschema@.dlq_capture()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'dlq_capture';
COMMENT ON FUNCTION @extschema@.dlq_capture() IS
    'BEFORE INSERT OR UPDATE row trigger (queue [, component]): rows that would violate NOT NULL, CHECK, UNIQUE or FOREIGN KEY go to the DLQ and are skipped';

CREATE FUNCTION @extschema@.dlq_capture_isolate()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'dlq_capture_isolate';
COMMENT ON FUNCTION @extschema@.dlq_capture_isolate() IS
    'INSTEAD OF INSERT row trigger of an intake view (queue, target oid [, component]): inserts each row in a subtransaction, failures go to the DLQ';

CREATE FUNCTION @extschema@.dlq_attach(
    target regclass,
    queue text DEFAULT NULL,
    mode text DEFAULT 'validate')
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_attach';
COMMENT ON FUNCTION @extschema@.dlq_attach(regclass, text, text) IS
    'capture failed rows of a table you own into a queue (default: the table name) and replay into it; mode validate or isolate; returns the queue';

CREATE FUNCTION @extschema@.dlq_detach(target regclass)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_detach';
COMMENT ON FUNCTION @extschema@.dlq_detach(regclass) IS
    'undo dlq_attach: drop the capture trigger or intake view and clear the replay target; messages stay';

/* Callers of dlq_attach/dlq_detach must own the table (checked in C); dlq_writer may also use dlq_capture in its own CREATE TRIGGER. */
GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_attach(regclass, text, text),
    @extschema@.dlq_detach(regclass)
    TO dlq_writer, dlq_operator;
GRANT EXECUTE ON FUNCTION @extschema@.dlq_capture() TO dlq_writer;
/*
 * etl_status, etl_status_json, stages and metrics (src/status.c).
 *
 * Message counts per queue and state are kept in dlq.counts by statement
 * triggers on dlq.messages, so that etl_status never counts index entries.
 * Each writing backend adds its deltas to its own shard row (its backend
 * id modulo 64), so concurrent writers do not wait for each other; a
 * queue's count is the sum over its shards (a shard may go negative).
 */

CREATE TABLE dlq.counts (
    queue           text NOT NULL,
    status          dlq.status NOT NULL,
    shard           smallint NOT NULL,
    n               bigint NOT NULL,
    last_failed_at  timestamptz,
    PRIMARY KEY (queue, status, shard)
) WITH (fillfactor = 50);
COMMENT ON TABLE dlq.counts IS
    'message counts per queue, state and writer shard, kept by triggers on dlq.messages; rebuilt by dlq.recount()';

CREATE FUNCTION dlq.count_messages() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'dlq_count_messages';
COMMENT ON FUNCTION dlq.count_messages() IS
    'statement trigger on dlq.messages: adds the statement''s changes to dlq.counts';

CREATE TRIGGER messages_count_insert AFTER INSERT ON dlq.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlq.count_messages();
CREATE TRIGGER messages_count_update AFTER UPDATE ON dlq.messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlq.count_messages();
CREATE TRIGGER messages_count_delete AFTER DELETE ON dlq.messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dlq.count_messages();
CREATE TRIGGER messages_count_truncate AFTER TRUNCATE ON dlq.messages
    FOR EACH STATEMENT EXECUTE FUNCTION dlq.count_messages();

/*
 * Rebuild dlq.counts from dlq.messages, e.g. after a data-only restore with
 * --disable-triggers.  Blocks writers of dlq.messages while it runs.
 */
CREATE FUNCTION dlq.recount() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total bigint;
BEGIN
    LOCK TABLE dlq.messages IN SHARE MODE;
    DELETE FROM dlq.counts;
    INSERT INTO dlq.counts (queue, status, shard, n, last_failed_at)
        SELECT m.queue, m.status, 0, count(*), max(m.last_failed_at)
          FROM dlq.messages m GROUP BY m.queue, m.status;
    SELECT coalesce(sum(c.n), 0) INTO total FROM dlq.counts c;
    RETURN total;
END
$$;
COMMENT ON FUNCTION dlq.recount() IS
    'rebuild dlq.counts from dlq.messages; returns the number of messages counted';

/* Replay requests in flight are counted over replaying messages only. */
CREATE INDEX messages_replaying_request ON dlq.messages (queue, replay_request_id)
    WHERE status = 'replaying';

/* Pipeline stages that process a source table in key order. */
CREATE TABLE dlq.stages (
    stage           text PRIMARY KEY
                    CHECK (octet_length(stage) BETWEEN 1 AND 63 AND stage !~ '[[:cntrl:]]'),
    source          regclass NOT NULL,
    key_column      name NOT NULL,
    watermark       bigint,
    watermark_at    timestamptz,
    registered_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dlq.stages IS
    'pipeline stages registered with etl_register_stage and their watermarks (etl_watermark)';
SELECT pg_catalog.pg_extension_config_dump('dlq.stages', '');

/* Read through etl_status (as the owner); nobody else needs them. */
REVOKE ALL ON dlq.counts, dlq.stages FROM PUBLIC;

CREATE FUNCTION @extschema@.etl_status(queue text DEFAULT NULL)
RETURNS TABLE (
    kind                    text,
    name                    text,
    health                  text,
    reason                  text,
    lag                     bigint,
    pending                 bigint,
    replaying               bigint,
    review                  bigint,
    resolved                bigint,
    expired                 bigint,
    oldest_pending_at       timestamptz,
    oldest_pending_age      interval,
    last_failure_at         timestamptz,
    last_replay_at          timestamptz,
    replay_requests_in_flight bigint,
    paused                  boolean,
    watermark               bigint,
    source_max              bigint,
    watermark_at            timestamptz,
    worker                  text,
    worker_heartbeat        timestamptz)
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 20
AS 'MODULE_PATHNAME', 'etl_status';
COMMENT ON FUNCTION @extschema@.etl_status(text) IS
    'health of every queue and registered stage (or of one, by name): live, syncing, stale or error, and why';

CREATE FUNCTION @extschema@.etl_status_json()
RETURNS jsonb
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'etl_status_json';
COMMENT ON FUNCTION @extschema@.etl_status_json() IS
    'etl_status as one JSON document with the overall health (the worst) for dashboards';

CREATE FUNCTION @extschema@.etl_register_stage(stage text, source regclass, key_column name)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'etl_register_stage';
COMMENT ON FUNCTION @extschema@.etl_register_stage(text, regclass, name) IS
    'register (or re-register, resetting its watermark) a stage that processes source in key_column order';

CREATE FUNCTION @extschema@.etl_watermark(stage text, "position" bigint)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'etl_watermark';
COMMENT ON FUNCTION @extschema@.etl_watermark(text, bigint) IS
    'advance a stage''s watermark to position (never backwards); returns the watermark now in force';

CREATE FUNCTION dlq.etl_worker_state(OUT state text, OUT pid integer, OUT last_heartbeat timestamptz)
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_etl_worker_state';
COMMENT ON FUNCTION dlq.etl_worker_state() IS
    'state of this database''s dlq worker as etl_status sees it: running, stopped, not_preloaded or standby';

/* One row per queue, stage and figure, named for Prometheus. */
CREATE VIEW dlq.metrics AS
WITH s AS (SELECT * FROM @extschema@.etl_status())
SELECT f.metric, s.name AS queue, NULL::text AS stage, f.status, f.value
  FROM s
 CROSS JOIN LATERAL (VALUES
        ('dlq_messages', 'pending', s.pending::float8),
        ('dlq_messages', 'replaying', s.replaying::float8),
        ('dlq_messages', 'review', s.review::float8),
        ('dlq_messages', 'resolved', s.resolved::float8),
        ('dlq_messages', 'expired', s.expired::float8),
        ('dlq_queue_lag', NULL, s.lag::float8),
        ('dlq_oldest_pending_age_seconds', NULL,
         coalesce(extract(epoch FROM s.oldest_pending_age)::float8, 0)),
        ('dlq_queue_replay_requests_in_flight', NULL, s.replay_requests_in_flight::float8),
        ('dlq_queue_paused', NULL, s.paused::int::float8),
        ('dlq_queue_health', NULL,
         array_position(ARRAY['live', 'syncing', 'stale', 'error'], s.health)::float8 - 1))
        AS f(metric, status, value)
 WHERE s.kind = 'queue'
UNION ALL
SELECT f.metric, NULL, s.name, NULL, f.value
  FROM s
 CROSS JOIN LATERAL (VALUES
        ('dlq_stage_lag', s.lag::float8),
        ('dlq_stage_watermark', s.watermark::float8),
        ('dlq_stage_source_max', s.source_max::float8),
        ('dlq_stage_health',
         array_position(ARRAY['live', 'syncing', 'stale', 'error'], s.health)::float8 - 1))
        AS f(metric, value)
 WHERE s.kind = 'stage' AND f.value IS NOT NULL
UNION ALL
SELECT f.metric, NULL, NULL, NULL, f.value
  FROM dlq.etl_worker_state() w
 CROSS JOIN LATERAL (VALUES
        ('dlq_worker_up', (w.state = 'running')::int::float8),
        ('dlq_worker_heartbeat_age_seconds',
         extract(epoch FROM clock_timestamp() - w.last_heartbeat)::float8))
        AS f(metric, value)
 WHERE f.value IS NOT NULL;
COMMENT ON VIEW dlq.metrics IS
    'etl_status as one row per queue or stage and figure, with Prometheus metric names (see README.md "Metrics")';
REVOKE ALL ON dlq.metrics FROM PUBLIC;
GRANT SELECT ON dlq.metrics TO dlq_reader;

GRANT EXECUTE ON FUNCTION
    @extschema@.etl_status(text),
    @extschema@.etl_status_json(),
    dlq.etl_worker_state()
    TO dlq_reader;
GRANT EXECUTE ON FUNCTION @extschema@.etl_watermark(text, bigint) TO dlq_writer, dlq_operator;
GRANT EXECUTE ON FUNCTION
    @extschema@.etl_register_stage(text, regclass, name),
    dlq.recount()
    TO dlq_operator;
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
/*
 * Privileges: nothing to PUBLIC.  Each role gets EXECUTE on what it needs;
 * the functions themselves read and write storage as the extension owner.
 * Parts added later grant their own functions in their own files.
 */
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

GRANT EXECUTE ON FUNCTION @extschema@.dlq_store(text, jsonb, text, text, text, jsonb, jsonb, text)
    TO dlq_writer;
GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_list(text, bigint, integer, text, text, text, boolean),
    @extschema@.dlq_list_page(text, bigint, integer, text, text, text, boolean),
    @extschema@.dlq_get(bigint)
    TO dlq_reader;
