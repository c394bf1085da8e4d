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

/*
 * The API checks every argument (src/util.c, DESIGN 7.1); these bring the
 * settings 1.0 accepted into the same ranges, and keep direct writes by the
 * owner inside them.  Intervals: retention at most 100 years, delays at
 * most 1 year, a year of 366 days.  Channels: never the worker's alert channel, which 1.0 gave
 * by default to a queue named "alerts"; such a queue gets the channel 1.1
 * would give it (dlq_default_channel in src/util.c: the queue name clipped
 * to 50 bytes, "_" and its hash).
 */
UPDATE dlq.queues
   SET retention = CASE WHEN retention > interval '36600 days' THEN interval '100 years'
                        ELSE retention END,
       resolved_retention = CASE WHEN resolved_retention > interval '36600 days'
                                 THEN interval '100 years' ELSE resolved_retention END,
       retry_base = CASE WHEN retry_base > interval '366 days' THEN interval '1 year'
                         ELSE retry_base END,
       retry_max = CASE WHEN retry_max > interval '366 days' THEN interval '1 year'
                        ELSE retry_max END,
       alert_cooldown = CASE WHEN alert_cooldown > interval '366 days' THEN interval '1 year'
                             ELSE alert_cooldown END
 WHERE retention > interval '36600 days' OR resolved_retention > interval '36600 days'
    OR retry_base > interval '366 days' OR retry_max > interval '366 days'
    OR alert_cooldown > interval '366 days';

DO $limits$
DECLARE
    q text;
    keep text;
BEGIN
    FOR q IN SELECT queue FROM dlq.queues WHERE channel = 'dlq_alerts' LOOP
        IF pg_catalog.octet_length(q) + 4 <= 63 AND q <> 'alerts' THEN
            UPDATE dlq.queues SET channel = 'dlq_' || q WHERE queue = q;
        ELSE
            keep := q;
            WHILE pg_catalog.octet_length(keep) > 50 LOOP
                keep := pg_catalog.left(keep, -1);
            END LOOP;
            UPDATE dlq.queues
               SET channel = 'dlq_' || keep || '_'
                             || pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.hashtext(q)), 8, '0')
             WHERE queue = q;
        END IF;
    END LOOP;
END
$limits$;

ALTER TABLE dlq.queues ADD CONSTRAINT queues_limits CHECK (
    retention <= interval '36600 days' AND resolved_retention <= interval '36600 days'
    AND retry_base <= interval '366 days' AND retry_max <= interval '366 days'
    AND alert_cooldown <= interval '366 days' AND channel <> 'dlq_alerts');

/* ---- DROP EXTENSION keeps messages unless told otherwise ---- */

/*
 * A ddl_command_start event trigger in C (src/drop_guard.c): DROP EXTENSION
 * dlq, and a DROP SCHEMA ... CASCADE or DROP OWNED that would drop it, fail
 * while dlq.messages holds messages unless dlq.drop_discards_messages is on.
 * Only these three tags call it; the library is loaded by the call when it
 * is not preloaded.  Nobody needs EXECUTE on the function: event triggers
 * call it without the check.
 */
CREATE FUNCTION dlq.drop_guard() RETURNS event_trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'dlq_drop_guard';
COMMENT ON FUNCTION dlq.drop_guard() IS
    'event trigger: refuse to drop extension dlq while dlq.messages holds messages, unless dlq.drop_discards_messages is on';

CREATE EVENT TRIGGER dlq_drop_guard ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION dlq.drop_guard();
COMMENT ON EVENT TRIGGER dlq_drop_guard IS
    'keeps DROP EXTENSION dlq from deleting messages unless dlq.drop_discards_messages is on';

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
