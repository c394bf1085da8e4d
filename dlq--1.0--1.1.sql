/*
 * dlq--1.0--1.1.sql: upgrade from 1.0 to 1.1.
 *
 * CREATE EXTENSION dlq installs 1.0 (dlq--1.0.sql, frozen) and runs this
 * script after it, so a fresh 1.1 and an updated 1.0 are the same schema
 * (tests/t/091_upgrade.pl compares them).  Every schema change of 1.1 goes
 * here, in the section of its concern; CHANGELOG.md says what each adds.
 */

\echo Use "ALTER EXTENSION dlq UPDATE TO '1.1'" to load this file. \quit

/* ---- Code map: C entry points of etl_* carry the dlq_ prefix ---- */



/* ---- Trust: binding queues to tables, detach, capture (attach.c, capture.c) ---- */

/*
 * The role that created each queue (dlq_store, a capture trigger, dlq_attach,
 * dlq_configure, dlq_listen), set from the caller's user id: rows are written
 * as the extension owner, so there is no DEFAULT.  Only that role (or a
 * member) may attach a table to the queue once it exists; NULL, for queues
 * made by 1.0, means unknown, and then only a superuser may.
 */
ALTER TABLE dlq.queues ADD COLUMN created_by regrole;
COMMENT ON COLUMN dlq.queues.created_by IS
    'role that created the queue; only it (or a member) may attach a table to it; NULL = created before 1.1, creator unknown';

COMMENT ON FUNCTION @extschema@.dlq_attach(regclass, text, text) IS
    'capture failed rows of a table you own into a queue (default: the table name) and replay into it; an existing queue must be unbound and created by you; mode validate or isolate; returns the queue';
COMMENT ON FUNCTION @extschema@.dlq_detach(regclass) IS
    'undo dlq_attach on a table you own: drop the capture triggers or intake view dlq made (which you must own) and clear the replay target; messages stay';



/* ---- Trust: replays run as a role that could write (replay.c, queue.c, worker) ---- */



/* ---- Trust: consumers and the store/nack race (consumer.c, store.c) ---- */



/* ---- Limits: sizes, intervals, names (util.c and every caller) ---- */



/* ---- DROP EXTENSION keeps messages unless told otherwise ---- */



/* ---- Privileges: nothing new reaches PUBLIC (keep this section last) ---- */
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
