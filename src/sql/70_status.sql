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
