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
