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
