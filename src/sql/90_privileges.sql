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
