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
