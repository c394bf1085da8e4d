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
