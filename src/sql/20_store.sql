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
