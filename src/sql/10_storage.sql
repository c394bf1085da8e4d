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
