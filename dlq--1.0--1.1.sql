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

/*
 * The C symbols of the etl_* functions are dlq_etl_* (src/status.c,
 * src/stages.c), like every other symbol of the library; the SQL names stay.
 * Only the symbol changes: signature, volatility, parallel safety and rows
 * are those of dlq--1.0.sql, so CREATE OR REPLACE keeps comments and grants.
 * The library still exports the 1.0 symbols for a database not yet updated.
 */
CREATE OR REPLACE FUNCTION @extschema@.etl_status(queue text DEFAULT NULL)
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
AS 'MODULE_PATHNAME', 'dlq_etl_status';

CREATE OR REPLACE FUNCTION @extschema@.etl_status_json()
RETURNS jsonb
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_etl_status_json';

CREATE OR REPLACE FUNCTION @extschema@.etl_register_stage(stage text, source regclass, key_column name)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_etl_register_stage';

CREATE OR REPLACE FUNCTION @extschema@.etl_watermark(stage text, "position" bigint)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_etl_watermark';



/* ---- Storage: open messages in one partition, closed ones in a ring of slots (issue 12) ---- */

/*
 * dlq.messages becomes a table partitioned by LIST on slot:
 *
 *   slot 0      dlq.messages_live: every open message (pending, replaying,
 *               review); the 1.0 table itself, attached as it is.
 *   slot 1..8   dlq.messages_closed_1..8: a ring of partitions for closed
 *               (resolved, expired) messages.  Closing a message moves it
 *               into the ring's current slot (UPDATE ... SET slot).
 *   slot 9..16  dlq.messages_archive_1..8: a second ring, for archived
 *               messages (issue 13).
 *
 * The worker turns the ring (dlq.worker_rotate): every
 * dlq.partition_interval the current slot is closed and the next one, once
 * emptied, takes its place; a closed slot whose messages are all past their
 * queue's resolved_retention is emptied with TRUNCATE, not DELETE, moving
 * the few messages not yet due into the current slot first.  A closed
 * message thus leaves once its slot has closed and its retention has
 * passed: with the defaults (one-day slots, seven days of
 * resolved_retention) between seven and eight days after it closed, and
 * the ring of eight holds those days without moving any message.  The ring
 * is fixed and created here, so no DDL runs on the parent table at run time
 * (no ACCESS EXCLUSIVE lock on dlq.messages), and dump/restore sees the
 * same tables on both sides.  CONTRIBUTING.md, "Storage", has the reasons
 * and tests/bench/README.md the figures.
 *
 * When it leaves, a message of a queue whose archive_retention is above 0
 * is not purged but copied once, as 'archived', into the live slot of the
 * archive ring, which the worker turns the same way every
 * dlq.archive_interval (16 days: eight slots span 128 days, so the default
 * 90 days of archive_retention move no message); an archive slot is
 * emptied by TRUNCATE once past every queue's archive_retention.  An
 * archived message thus stays between archive_retention and
 * archive_retention + dlq.archive_interval.
 *
 * A unique index of a partitioned table must contain the partition key:
 * dedup is (queue, dedup_key, slot) over open messages, which all live in
 * slot 0, so it is exactly 1.0's (queue, dedup_key).  message_id is unique
 * per partition (each has its primary key) and across them because rows
 * only ever move with their id.
 */

/* The counts triggers have transition tables, which a partition cannot have: they move to the parent. */
DROP TRIGGER messages_count_insert ON dlq.messages;
DROP TRIGGER messages_count_update ON dlq.messages;
DROP TRIGGER messages_count_delete ON dlq.messages;
DROP TRIGGER messages_count_truncate ON dlq.messages;

ALTER TABLE dlq.messages RENAME TO messages_live;
COMMENT ON TABLE dlq.messages_live IS 'partition of dlq.messages holding the open (pending, replaying, review) messages';
ALTER TABLE dlq.messages_live ADD COLUMN slot integer NOT NULL DEFAULT 0;
ALTER INDEX dlq.messages_pkey RENAME TO messages_live_pkey;
ALTER INDEX dlq.messages_queue_status_id RENAME TO messages_live_queue_status_id;
ALTER INDEX dlq.messages_queue_status_component_id RENAME TO messages_live_queue_status_component_id;
ALTER INDEX dlq.messages_status_id RENAME TO messages_live_status_id;
ALTER INDEX dlq.messages_pending_expiry RENAME TO messages_live_pending_expiry;
ALTER INDEX dlq.messages_replaying_claim RENAME TO messages_live_replaying_claim;
ALTER INDEX dlq.messages_retry_due RENAME TO messages_live_retry_due;
ALTER INDEX dlq.messages_replaying_request RENAME TO messages_live_replaying_request;
/* Only closed messages from before 1.1 are in here; dlq.worker_purge deletes them. */
ALTER INDEX dlq.messages_closed RENAME TO messages_live_closed;
/* status 'any' pages are merged from one page per state (src/list.c). */
DROP INDEX dlq.messages_queue_id;
DROP INDEX dlq.messages_dedup;
CREATE UNIQUE INDEX messages_live_dedup ON dlq.messages_live (queue, dedup_key, slot)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review');

/*
 * The identity moves to the parent and goes on from where 1.0's stopped
 * (set as data, so that the schema of an updated 1.0 is a fresh 1.1's).
 */
DO $convert$
DECLARE
    next_id bigint;
BEGIN
SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END
  INTO next_id FROM dlq.messages_message_id_seq;
ALTER TABLE dlq.messages_live ALTER COLUMN message_id DROP IDENTITY;
CREATE TABLE dlq.messages (
    message_id          bigint NOT NULL GENERATED ALWAYS AS IDENTITY,
    queue               text NOT NULL,
    component           text,
    status              dlq.status NOT NULL DEFAULT 'pending',
    payload             jsonb NOT NULL,
    error               text NOT NULL,
    sqlstate            char(5),
    error_class         text NOT NULL
                        CONSTRAINT messages_error_class_check CHECK (error_class IN ('transient', 'permanent')),
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
    operation           text
                        CONSTRAINT messages_operation_check CHECK (operation IN ('INSERT', 'UPDATE')),
    slot                integer NOT NULL DEFAULT 0
) PARTITION BY LIST (slot);
PERFORM pg_catalog.setval('dlq.messages_message_id_seq', next_id, false);
END
$convert$;
COMMENT ON TABLE dlq.messages IS
    'one row per failed message or captured row; message_id is the keyset cursor; partitioned by slot (0 open, 1-8 closed, 9-16 archived)';
COMMENT ON COLUMN dlq.messages.slot IS
    'partition: 0 for open messages, else the slot of the ring (dlq.slots) the message was closed or archived into';

ALTER TABLE dlq.messages ATTACH PARTITION dlq.messages_live FOR VALUES IN (0);

/*
 * The indexes every partition has, each for the queries that need it
 * (CONTRIBUTING.md, "Storage"); creating them on the parent adopts the
 * matching ones of dlq.messages_live.
 */
CREATE INDEX messages_queue_status_id ON dlq.messages (queue, status, message_id);
CREATE INDEX messages_queue_status_component_id ON dlq.messages (queue, status, component, message_id);
CREATE INDEX messages_status_id ON dlq.messages (status, message_id);
CREATE UNIQUE INDEX messages_dedup ON dlq.messages (queue, dedup_key, slot)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review');
CREATE INDEX messages_pending_expiry ON dlq.messages (expires_at) WHERE status = 'pending';
CREATE INDEX messages_replaying_claim ON dlq.messages (claim_expires_at) WHERE status = 'replaying';
CREATE INDEX messages_retry_due ON dlq.messages (next_retry_at) WHERE status = 'pending' AND next_retry_at IS NOT NULL;
CREATE INDEX messages_replaying_request ON dlq.messages (queue, replay_request_id) WHERE status = 'replaying';

/*
 * The two rings of slots: the ring of closed messages (slots 1-8, ring
 * 'closed', whose live slot is in state 'current') and the ring of
 * archived ones (slots 9-16, ring 'archive', whose live slot is in state
 * 'archiving').  Each ring has exactly one live slot.  The archive ring's
 * live slot has a state of its own so that "the current slot" (state
 * 'current', DLQ_CLOSING_SLOT in src/dlq.h and the worker's statements)
 * stays the one slot closing messages go to.
 */
CREATE TABLE dlq.slots (
    slot        integer PRIMARY KEY CHECK (slot BETWEEN 1 AND 16),
    ring        text NOT NULL CHECK (ring IN ('closed', 'archive')),
    partition   regclass NOT NULL,
    state       text NOT NULL CHECK (state IN ('current', 'archiving', 'closed', 'empty')),
    opened_at   timestamptz,
    closed_at   timestamptz,
    check_after timestamptz,
    CONSTRAINT slots_ring_slots_check CHECK ((ring = 'closed') = (slot <= 8)),
    CONSTRAINT slots_live_state_check CHECK (state <> CASE ring WHEN 'closed' THEN 'archiving' ELSE 'current' END)
);
COMMENT ON TABLE dlq.slots IS
    'the rings of partitions of closed (slots 1-8) and archived (9-16) messages: in each ring one live slot (current, archiving) takes messages, closed ones wait for their retention, empty ones wait for their turn';
CREATE UNIQUE INDEX slots_one_current ON dlq.slots ((true)) WHERE state = 'current';
CREATE UNIQUE INDEX slots_one_archiving ON dlq.slots ((true)) WHERE state = 'archiving';

DO $ring$
BEGIN
    FOR s IN 1..8 LOOP
        EXECUTE pg_catalog.format(
            'CREATE TABLE dlq.messages_closed_%1$s PARTITION OF dlq.messages'
            ' (CONSTRAINT messages_closed_%1$s_pkey PRIMARY KEY (message_id))'
            ' FOR VALUES IN (%1$s)', s);
        EXECUTE pg_catalog.format(
            'COMMENT ON TABLE dlq.messages_closed_%1$s IS %2$L', s,
            'partition of dlq.messages for closed messages, slot ' || s || ' of the ring (dlq.slots)');
        INSERT INTO dlq.slots (slot, ring, partition, state, opened_at)
        VALUES (s, 'closed', pg_catalog.format('dlq.messages_closed_%s', s)::regclass,
                CASE s WHEN 1 THEN 'current' ELSE 'empty' END,
                CASE s WHEN 1 THEN pg_catalog.now() END);
        PERFORM pg_catalog.pg_extension_config_dump(pg_catalog.format('dlq.messages_closed_%s', s), '');
    END LOOP;
    /* The archive ring: dlq.messages_archive_1..8 are slots 9..16. */
    FOR s IN 1..8 LOOP
        EXECUTE pg_catalog.format(
            'CREATE TABLE dlq.messages_archive_%1$s PARTITION OF dlq.messages'
            ' (CONSTRAINT messages_archive_%1$s_pkey PRIMARY KEY (message_id))'
            ' FOR VALUES IN (%2$s)', s, s + 8);
        EXECUTE pg_catalog.format(
            'COMMENT ON TABLE dlq.messages_archive_%1$s IS %2$L', s,
            'partition of dlq.messages for archived messages, slot ' || s + 8
            || ' (archive ring, dlq.slots)');
        INSERT INTO dlq.slots (slot, ring, partition, state, opened_at)
        VALUES (s + 8, 'archive', pg_catalog.format('dlq.messages_archive_%s', s)::regclass,
                CASE s WHEN 1 THEN 'archiving' ELSE 'empty' END,
                CASE s WHEN 1 THEN pg_catalog.now() END);
        PERFORM pg_catalog.pg_extension_config_dump(pg_catalog.format('dlq.messages_archive_%s', s), '');
    END LOOP;
END
$ring$;
SELECT pg_catalog.pg_extension_config_dump('dlq.messages_message_id_seq', '');
/*
 * pg_dump copies each partition's rows into that partition, and the counts
 * triggers of the parent do not see them: dlq.counts is dumped instead (1.0
 * rebuilt it from the messages as they were restored).  dlq.slots is not:
 * its rows are this script's, and after a restore the ring starts again
 * from slot 1; a slot's messages leave by their own resolved_at whatever
 * the slot's state says.
 */
SELECT pg_catalog.pg_extension_config_dump('dlq.counts', '');

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

/* dlq.recount() counts slot shards too: redefined with the totals, in the section of those. */

/* The API's row type keeps 1.0's columns. */
CREATE OR REPLACE VIEW dlq.message AS
    SELECT message_id, queue, component, status, payload, error, sqlstate, error_class,
           error_detail, metadata, dedup_key, occurrences, attempts, max_attempts, stored_at,
           last_failed_at, expires_at, next_retry_at, replay_request_id, claimed_by,
           claim_expires_at, resolved_at, source_relation, operation
      FROM dlq.messages;

REVOKE ALL ON dlq.messages, dlq.slots FROM PUBLIC;
/* Readers read through dlq.messages; the partitions are the owner's. */
REVOKE ALL ON dlq.messages_live FROM PUBLIC, dlq_reader;
GRANT SELECT ON dlq.messages, dlq.slots TO dlq_reader;

/*
 * What a slot of a ring holds, by queue and state, as dlq.counts has it
 * (the slot's own shards, src/counts.c: no scan of the partition), and
 * whether each queue's messages there are all due to leave it: in the ring
 * of closed messages once past the queue's resolved_retention, in the
 * archive ring once past its archive_retention.  A message entered the
 * slot before the slot closed (closed_at), give or take the commit of the
 * rotation: one second is allowed for that.  A queue no longer in
 * dlq.queues counts as due; a slot without closed_at (restored, say) as
 * not due.
 */
CREATE FUNCTION dlq.slot_contents(slot integer, closed_at timestamptz)
RETURNS TABLE (queue text, status dlq.status, n bigint, due boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.queue, c.status, sum(c.n)::bigint,
           coalesce(slot_contents.closed_at
                    + max(CASE WHEN r.ring = 'archive' THEN q.archive_retention ELSE q.resolved_retention END)
                    + interval '1 second' <= now(),
                    slot_contents.closed_at IS NOT NULL AND bool_and(q.queue IS NULL))
      FROM dlq.counts c LEFT JOIN dlq.queues q ON q.queue = c.queue
      LEFT JOIN dlq.slots r ON r.slot = slot_contents.slot
     WHERE c.shard BETWEEN -(slot_contents.slot * 64 + 64) AND -(slot_contents.slot * 64 + 1)
     GROUP BY c.queue, c.status
    HAVING sum(c.n) <> 0
$$;
COMMENT ON FUNCTION dlq.slot_contents(integer, timestamptz) IS
    'messages of a slot of a ring per queue and state, from dlq.counts, and whether they are all past retention';

/*
 * Empty one closed slot of a ring: under an EXCLUSIVE lock on its partition
 * (no writer, readers allowed), then an ACCESS EXCLUSIVE one for the
 * TRUNCATE (each taken within lock_wait, else nothing is done and NULL
 * returned),
 *  - move the messages of queues not yet due that are still within their
 *    retention into the slot dest of the same ring (in the archive ring a
 *    message's retention is resolved_retention + archive_retention from
 *    its resolved_at);
 *  - in the ring of closed messages, copy the others of queues whose
 *    archive_retention is above 0 into the archive ring's live slot as
 *    'archived' (one INSERT ... SELECT), audited 'archived' per queue;
 *  - audit the rest as purged per queue;
 * naming the messages of an event when at most 100, as 1.0 did per batch;
 * then take the slot off dlq.counts and TRUNCATE the partition.  Nothing
 * reads the partition but the move and the copy, which read only their
 * queues' rows, and the ids of small events.  Returns {"purged": n,
 * "moved": n, "archived": n}.  The EXCLUSIVE lock makes it exact: a
 * transaction closing a message into this slot has committed before (its
 * message and its counts are seen) or waits and lands in an emptied slot.
 */
CREATE FUNCTION dlq.slot_empty(slot integer, dest integer, actor text, lock_wait interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved_timeout text := current_setting('lock_timeout');
    s dlq.slots;
    arch dlq.slots;
    contents jsonb;
    keep text[];
    to_archive text[];
    cols text;
    moved jsonb;
    archived jsonb := '{}';
    purged bigint;
BEGIN
    SELECT * INTO s FROM dlq.slots r WHERE r.slot = slot_empty.slot;
    IF NOT FOUND OR dest IS NULL OR dest = s.slot
       OR NOT EXISTS (SELECT 1 FROM dlq.slots r WHERE r.slot = dest AND r.ring = s.ring) THEN
        RAISE EXCEPTION 'no such pair of slots of the ring: % into %', slot, dest
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a slot of the ring can only be emptied in a READ COMMITTED transaction'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Under a snapshot taken before the lock, messages closed meanwhile would not be seen.';
    END IF;
    IF s.ring = 'closed' THEN
        SELECT * INTO arch FROM dlq.slots r WHERE r.state = 'archiving';
    END IF;
    /*
     * The parent first, as every statement on dlq.messages takes it: a DDL
     * on dlq.messages (which locks the parent, then each partition) then
     * waits for this one instead of deadlocking with it.  The slot in
     * EXCLUSIVE mode, which keeps out every writer (a transaction closing a
     * message into it has committed, or waits) but lets readers in while
     * messages are moved and copied; ACCESS EXCLUSIVE only for the
     * TRUNCATE.  The archive ring's live slot, which the copy writes, after
     * the slot emptied.  When a lock is not had within lock_wait,
     * everything is undone and NULL returned.
     */
    BEGIN
        PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text, true);
        LOCK TABLE ONLY dlq.messages IN ROW EXCLUSIVE MODE;
        EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE', s.partition);
        IF arch.slot IS NOT NULL THEN
            EXECUTE format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', arch.partition);
        END IF;
        PERFORM set_config('lock_timeout', saved_timeout, true);

        /*
         * What the slot holds, read once (nothing enters it any more), and
         * whether the messages of each queue that leave are archived.
         */
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'queue', c.queue, 'status', c.status, 'n', c.n, 'due', c.due,
                   'archive', arch.slot IS NOT NULL AND coalesce(q.archive_retention > interval '0', false))), '[]')
          INTO contents
          FROM dlq.slot_contents(s.slot, s.closed_at) c LEFT JOIN dlq.queues q ON q.queue = c.queue;

        /*
         * Only the queues not yet due are read, through their index, and the
         * slot is a constant so that the plan holds that one partition.
         */
        keep := ARRAY(SELECT DISTINCT x.queue FROM jsonb_to_recordset(contents) AS x(queue text, due boolean)
                       WHERE NOT x.due);
        moved := '[]';
        IF cardinality(keep) > 0 THEN
            EXECUTE format($move$
                WITH m AS (
                    UPDATE dlq.messages m SET slot = $1
                      FROM dlq.queues q
                     WHERE m.slot = %s AND q.queue = m.queue AND m.queue = ANY ($2)
                       AND m.resolved_at > now() - q.resolved_retention%s
                    RETURNING m.queue, m.status
                )
                SELECT coalesce(jsonb_agg(jsonb_build_object('queue', x.queue, 'status', x.status, 'n', x.n)), '[]')
                  FROM (SELECT m.queue, m.status, count(*) AS n FROM m GROUP BY 1, 2) x$move$,
                s.slot, CASE s.ring WHEN 'archive' THEN ' - q.archive_retention' ELSE '' END)
            INTO moved USING dest, keep;
        END IF;

        /*
         * The messages of archiving queues that leave are copied, every column
         * but status and slot as it is (whatever columns dlq.messages has), and
         * this slot's copies go with the TRUNCATE: one write per message.
         */
        to_archive := ARRAY(SELECT DISTINCT x.queue FROM jsonb_to_recordset(contents) AS x(queue text, archive boolean)
                             WHERE x.archive);
        IF cardinality(to_archive) > 0 THEN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
              FROM pg_attribute a
             WHERE a.attrelid = 'dlq.messages'::regclass AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' AND a.attname NOT IN ('status', 'slot');
            EXECUTE format($copy$
                WITH a AS (
                    INSERT INTO dlq.messages (%1$s, status, slot) OVERRIDING SYSTEM VALUE
                    SELECT %1$s, 'archived', $1 FROM %2$s m WHERE m.queue = ANY ($2)
                    RETURNING queue
                )
                SELECT coalesce(jsonb_object_agg(x.queue, x.n), '{}')
                  FROM (SELECT a.queue, count(*) AS n FROM a GROUP BY 1) x$copy$, cols, s.partition)
            INTO archived USING arch.slot, to_archive;
        END IF;

        /* dlq.counts does not have the moves yet: they are written at commit. */
        EXECUTE format($gone$
            WITH gone AS (
                SELECT c.queue, c.status, c.n - coalesce(mv.n, 0) AS n, c.archive
                  FROM jsonb_to_recordset($3) AS c(queue text, status dlq.status, n bigint, archive boolean)
                  LEFT JOIN jsonb_to_recordset($4) AS mv(queue text, status dlq.status, n bigint)
                    USING (queue, status)
            ), per AS (
                SELECT gone.queue, bool_or(gone.archive) AS archive, sum(gone.n) AS n,
                       coalesce(sum(gone.n) FILTER (WHERE gone.status = 'resolved'), 0) AS resolved,
                       coalesce(sum(gone.n) FILTER (WHERE gone.status = 'expired'), 0) AS expired
                  FROM gone GROUP BY gone.queue
            ), audit AS (
                INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
                SELECT $1, CASE WHEN p.archive THEN 'archived' ELSE 'purged' END::dlq.event_kind, p.queue, x.n,
                       CASE WHEN x.n <= 100
                            THEN ARRAY(SELECT m.message_id FROM %1$s m WHERE m.queue = p.queue ORDER BY 1) END,
                       CASE WHEN $6 = 'archive'
                            THEN jsonb_build_object('archived', p.n, 'partition', $2)
                            ELSE jsonb_build_object('resolved', p.resolved, 'expired', p.expired, 'partition', $2)
                       END
                       || CASE WHEN p.archive THEN jsonb_build_object('archive', $7) ELSE '{}' END
                  FROM per p
                 CROSS JOIN LATERAL (SELECT CASE WHEN p.archive THEN coalesce(($5 ->> p.queue)::bigint, 0)
                                                 ELSE p.n END) AS x(n)
                 WHERE x.n > 0
            )
            SELECT coalesce(sum(p.n) FILTER (WHERE NOT p.archive), 0) FROM per p$gone$, s.partition)
        INTO purged USING actor, s.partition::text, contents, moved, archived, s.ring, arch.partition::text;

        /*
         * The slot's counts go; the moved messages' own -n for this slot comes
         * at commit, so +n stands in for them until then.  The copies are
         * counted in the archive slot's shards by the trigger, at commit too.
         */
        DELETE FROM dlq.counts c WHERE c.shard BETWEEN -(s.slot * 64 + 64) AND -(s.slot * 64 + 1);
        INSERT INTO dlq.counts (queue, status, shard, n)
        SELECT mv.queue, mv.status, -(s.slot * 64 + 1), mv.n
          FROM jsonb_to_recordset(moved) AS mv(queue text, status dlq.status, n bigint);
        PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text, true);
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', s.partition);
        PERFORM set_config('lock_timeout', saved_timeout, true);
        EXECUTE format('TRUNCATE %s', s.partition);
    EXCEPTION WHEN lock_not_available THEN
        PERFORM set_config('lock_timeout', saved_timeout, true);
        RETURN NULL;
    END;
    RETURN jsonb_build_object('purged', purged,
                              'moved', (SELECT coalesce(sum((e ->> 'n')::bigint), 0)
                                          FROM jsonb_array_elements(moved) e),
                              'archived', (SELECT coalesce(sum(e.value::bigint), 0)
                                             FROM jsonb_each_text(archived) e));
END
$$;
COMMENT ON FUNCTION dlq.slot_empty(integer, integer, text, interval) IS
    'worker step: empty one closed slot of a ring (keeping those not yet due, archiving those of queues with an archive_retention), with TRUNCATE';

/*
 * One turn of both rings, run by the worker every round; the archive ring
 * first, so that what is archived in the round goes to its new live slot.
 * In each ring:
 *  - a closed slot is emptied once emptying it purges or archives at least
 *    as many messages as it may keep (move), so that purging never costs
 *    more row writes than it removes; when not, it is looked at again
 *    after the ring's period, or when the first of the queues it keeps is
 *    due if that comes sooner;
 *  - the live slot (current, archiving), once older than the ring's period
 *    (every: dlq.partition_interval, archive_every: dlq.archive_interval),
 *    is closed and the next slot of the ring becomes live; when that one
 *    still holds messages it is emptied first, its messages not yet due
 *    moving into the closing slot.
 * Both read dlq.counts, never the partitions.  Returns {"rotated": bool,
 * "archive_rotated": bool, "emptied": slots, "purged": n, "moved": n,
 * "archived": n}.
 */
CREATE FUNCTION dlq.worker_rotate(actor text DEFAULT current_user, every interval DEFAULT NULL,
                                  lock_wait interval DEFAULT '100ms',
                                  archive_every interval DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    closed_period interval := coalesce(every, current_setting('dlq.partition_interval', true)::interval, '1 day');
    archive_period interval := coalesce(archive_every, current_setting('dlq.archive_interval', true)::interval,
                                        '16 days');
    rg text;
    live text;
    period interval;
    cur dlq.slots;
    nxt dlq.slots;
    s dlq.slots;
    kept bigint;
    total bigint;
    done jsonb;
    emptied integer := 0;
    purged bigint := 0;
    moved bigint := 0;
    archived bigint := 0;
    rotated jsonb := '{}';
BEGIN
    /* Most rounds have nothing to do: then no lock, no transaction id. */
    IF NOT EXISTS (SELECT 1 FROM dlq.slots r
                    WHERE (r.state = 'closed' AND (r.check_after IS NULL OR r.check_after <= now()))
                       OR (r.state = 'current' AND r.opened_at <= now() - closed_period)
                       OR (r.state = 'archiving' AND r.opened_at <= now() - archive_period)) THEN
        RETURN jsonb_build_object('rotated', false, 'archive_rotated', false, 'emptied', 0, 'purged', 0,
                                  'moved', 0, 'archived', 0);
    END IF;
    /* Both live slots, always in this order. */
    PERFORM FROM dlq.slots r WHERE r.state IN ('current', 'archiving') ORDER BY r.slot FOR UPDATE;
    FOREACH rg IN ARRAY ARRAY['archive', 'closed'] LOOP
        live := CASE rg WHEN 'closed' THEN 'current' ELSE 'archiving' END;
        period := CASE rg WHEN 'closed' THEN closed_period ELSE archive_period END;
        SELECT * INTO cur FROM dlq.slots r WHERE r.state = live;
        FOR s IN SELECT * FROM dlq.slots r
                  WHERE r.ring = rg AND r.state = 'closed' AND (r.check_after IS NULL OR r.check_after <= now())
                  ORDER BY r.closed_at FOR UPDATE LOOP
            SELECT coalesce(sum(c.n) FILTER (WHERE NOT c.due), 0), coalesce(sum(c.n), 0)
              INTO kept, total FROM dlq.slot_contents(s.slot, s.closed_at) c;
            IF kept > total - kept THEN
                UPDATE dlq.slots r
                   SET check_after = LEAST(now() + period,
                         (SELECT min(s.closed_at + interval '1 second'
                                     + CASE rg WHEN 'archive' THEN q.archive_retention ELSE q.resolved_retention END)
                            FROM dlq.slot_contents(s.slot, s.closed_at) c
                            JOIN dlq.queues q ON q.queue = c.queue
                           WHERE NOT c.due))
                 WHERE r.slot = s.slot;
                CONTINUE;
            END IF;
            done := dlq.slot_empty(s.slot, cur.slot, actor, lock_wait);
            CONTINUE WHEN done IS NULL;
            UPDATE dlq.slots r SET state = 'empty', opened_at = NULL, closed_at = NULL, check_after = NULL
             WHERE r.slot = s.slot;
            IF total > 0 THEN
                emptied := emptied + 1;
            END IF;
            purged := purged + (done ->> 'purged')::bigint;
            moved := moved + (done ->> 'moved')::bigint;
            archived := archived + (done ->> 'archived')::bigint;
        END LOOP;

        IF cur.opened_at <= now() - period THEN
            SELECT * INTO nxt FROM dlq.slots r WHERE r.ring = rg
             ORDER BY r.slot <= cur.slot, r.slot LIMIT 1 FOR UPDATE;
            IF nxt.state = 'closed' THEN
                done := dlq.slot_empty(nxt.slot, cur.slot, actor, lock_wait);
                IF done IS NOT NULL THEN
                    emptied := emptied + 1;
                    purged := purged + (done ->> 'purged')::bigint;
                    moved := moved + (done ->> 'moved')::bigint;
                    archived := archived + (done ->> 'archived')::bigint;
                    nxt.state := 'empty';
                END IF;
            END IF;
            IF nxt.state = 'empty' THEN
                /* clock_timestamp: the slot closes now, not when this transaction began */
                UPDATE dlq.slots r SET state = 'closed', closed_at = clock_timestamp(), check_after = NULL
                 WHERE r.slot = cur.slot;
                UPDATE dlq.slots r SET state = live, opened_at = now(), closed_at = NULL, check_after = NULL
                 WHERE r.slot = nxt.slot;
                rotated := rotated || jsonb_build_object(rg, true);
            END IF;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('rotated', rotated ? 'closed', 'archive_rotated', rotated ? 'archive',
                              'emptied', emptied, 'purged', purged, 'moved', moved, 'archived', archived);
END
$$;
COMMENT ON FUNCTION dlq.worker_rotate(text, interval, interval, interval) IS
    'worker step: turn the rings of closed-message and archive partitions; empties (TRUNCATE) slots whose messages are past retention, archiving those of queues with an archive_retention';



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

/*
 * A dropped table's OID may later name another table (OID wraparound, or a
 * restore where a dangling regclass reads back as a number): a queue still
 * bound to it would replay into whatever table gets that OID.  When a table
 * is dropped, queues bound to it are unbound, with an audit event.  The
 * dropper may lack any right on dlq's tables, hence SECURITY DEFINER (with a
 * pinned search_path; it touches only rows naming the dropped tables).
 */
CREATE FUNCTION dlq.unbind_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone oid[];
BEGIN
    gone := ARRAY(SELECT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
                   WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                     AND d.objsubid = 0 AND d.object_type = 'table');
    IF pg_catalog.cardinality(gone) = 0 THEN
        RETURN;
    END IF;
    WITH bound AS (
        SELECT q.queue, q.replay_target::pg_catalog.oid AS target FROM dlq.queues q
         WHERE q.replay_target::pg_catalog.oid = ANY (gone)
           FOR UPDATE
    ), unbound AS (
        UPDATE dlq.queues q SET replay_target = NULL
          FROM bound b WHERE q.queue = b.queue
        RETURNING q.queue, b.target
    )
    INSERT INTO dlq.events (actor, kind, queue, detail)
    SELECT session_user, 'configured', u.queue,
           pg_catalog.jsonb_build_object('replay_target', NULL, 'reason', 'table dropped',
                                         'table', d.object_identity)
      FROM unbound u
      JOIN pg_catalog.pg_event_trigger_dropped_objects() d
        ON d.objid = u.target AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0;
END
$$;
COMMENT ON FUNCTION dlq.unbind_dropped_tables() IS
    'event trigger: a dropped table stops being any queue''s replay target (audited), so its OID can never route replays to another table';
CREATE EVENT TRIGGER dlq_unbind_dropped_tables ON sql_drop
    EXECUTE FUNCTION dlq.unbind_dropped_tables();
COMMENT ON EVENT TRIGGER dlq_unbind_dropped_tables IS
    'unbinds queues whose replay target is dropped (dlq.unbind_dropped_tables)';



/* ---- Trust: replays run as a role that could write (replay.c, queue.c, worker) ---- */

/*
 * retry_role: the role that turned auto_retry on.  dlq_configure records its
 * caller when a call sets auto_retry => true and clears it with false.  The
 * worker runs the queue's automatic retries as this role, in a
 * security-restricted operation, after checking at every run that it still
 * exists, is a member of dlq_operator and may INSERT into the replay target;
 * never as the extension owner.  A queue that had auto_retry on in 1.0 has
 * none: its retries wait until an operator turns auto_retry on again.
 */
ALTER TABLE dlq.queues ADD COLUMN retry_role regrole;
COMMENT ON COLUMN dlq.queues.retry_role IS
    'role that turned auto_retry on (dlq_configure); the worker''s automatic retries run as it, NULL: none (suspended)';

/*
 * Backoff that never overflows: computed in logarithms, so that no power of
 * retry_factor is ever formed, and capped at retry_max, and at one year
 * whatever retry_max says (now() plus the delay must stay a timestamp).
 * Odd inputs (retry_factor Infinity or NaN, n of 1 or less) give the cap or
 * the base, never an error: one message's backoff must not fail a batch.
 */
CREATE OR REPLACE FUNCTION dlq.retry_delay(q dlq.queues, n integer, jitter double precision DEFAULT random())
RETURNS interval
LANGUAGE sql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN d.log_secs >= ln(d.cap_secs) THEN d.cap
                ELSE make_interval(secs => exp(d.log_secs)) END
      FROM (SELECT c.cap,
                   greatest(extract(epoch FROM c.cap)::float8, 1e-6) AS cap_secs,
                   ln(greatest(extract(epoch FROM q.retry_base)::float8, 1e-6))
                   + CASE WHEN n > 1 THEN (n - 1) * ln(greatest(q.retry_factor, 1)) ELSE 0 END
                   + ln(0.9 + 0.2 * least(greatest(jitter, 0), 1)) AS log_secs
              FROM (SELECT least(q.retry_max, interval '1 year') AS cap) c) d
$$;
COMMENT ON FUNCTION dlq.retry_delay(dlq.queues, integer, double precision) IS
    'backoff before retry n of an auto_retry queue: retry_base * retry_factor^(n-1), +-10% jitter, capped at retry_max and at 1 year; never overflows';

/*
 * The worker's maintenance steps take an optional queue: when a batch over
 * every queue fails, the worker runs the step queue by queue, so that one
 * queue's poison message stalls only that queue (DESIGN 7.1).  NULL (the
 * default) is every queue.  Not STRICT because of that NULL; a NULL
 * batch_size takes nothing.  Bodies as in 1.0 otherwise.
 */
DROP FUNCTION dlq.worker_expire(integer, text);
CREATE FUNCTION dlq.worker_expire(batch_size integer, actor text DEFAULT current_user,
                                  queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        UPDATE dlq.messages m
           SET status = 'expired', resolved_at = now(), next_retry_at = NULL,
               slot = (SELECT r.slot FROM dlq.slots r WHERE r.state = 'current')
         WHERE m.slot = 0 AND m.message_id = ANY (ARRAY(
                   SELECT s.message_id FROM dlq.messages s
                    WHERE s.slot = 0 AND s.status = 'pending' AND s.expires_at <= now()
                      AND (worker_expire.queue IS NULL OR s.queue = worker_expire.queue)
                      AND batch_size IS NOT NULL
                    ORDER BY s.expires_at
                    LIMIT batch_size
                      FOR UPDATE SKIP LOCKED))
        RETURNING m.queue, m.message_id
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids)
        SELECT actor, 'expired', done.queue, count(*),
               CASE WHEN count(*) <= 100 THEN array_agg(message_id ORDER BY message_id) END
          FROM done GROUP BY done.queue
    )
    SELECT count(*) FROM done
$$;
COMMENT ON FUNCTION dlq.worker_expire(integer, text, text) IS
    'worker step: expire at most batch_size pending messages past expires_at, of one queue or (NULL) all; returns how many';

DROP FUNCTION dlq.worker_purge(integer, text);
CREATE FUNCTION dlq.worker_purge(batch_size integer, actor text DEFAULT current_user,
                                 queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM dlq.messages m
         WHERE m.slot = 0 AND m.message_id = ANY (ARRAY(
                   SELECT s.message_id
                     FROM dlq.messages s JOIN dlq.queues q ON q.queue = s.queue
                    WHERE s.slot = 0 AND s.status IN ('resolved', 'expired')
                      AND s.resolved_at <= now() - q.resolved_retention
                      AND (worker_purge.queue IS NULL OR s.queue = worker_purge.queue)
                      AND batch_size IS NOT NULL
                    ORDER BY s.resolved_at
                    LIMIT batch_size
                      FOR UPDATE OF s SKIP LOCKED))
        RETURNING m.queue, m.message_id, m.status
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
        SELECT actor, 'purged', gone.queue, count(*),
               CASE WHEN count(*) <= 100 THEN array_agg(message_id ORDER BY message_id) END,
               jsonb_build_object('resolved', count(*) FILTER (WHERE status = 'resolved'),
                                  'expired', count(*) FILTER (WHERE status = 'expired'))
          FROM gone GROUP BY gone.queue
    )
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION dlq.worker_purge(integer, text, text) IS
    'worker step: delete at most batch_size resolved/expired messages left in the live partition by 1.0 past their queue''s resolved_retention, of one queue or (NULL) all (closed messages of 1.1 leave by dlq.worker_rotate)';

DROP FUNCTION dlq.worker_recover(integer, interval, text, boolean);
CREATE FUNCTION dlq.worker_recover(batch_size integer, timeout interval,
                                   actor text DEFAULT current_user,
                                   with_unclaimed boolean DEFAULT true,
                                   queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    only_queue text := queue;
    picked bigint[];
    r record;
    into_id bigint;
    folded bigint := 0;
    returned bigint;
    tries integer;
    conflict text;
BEGIN
    IF batch_size IS NULL OR timeout IS NULL OR with_unclaimed IS NULL THEN
        RETURN NULL;
    END IF;
    picked := ARRAY(
        SELECT s.message_id FROM dlq.messages s
         WHERE s.status = 'replaying' AND s.slot = 0  -- open messages are all in slot 0
           AND (only_queue IS NULL OR s.queue = only_queue)
           AND (s.claim_expires_at <= now() - timeout
                OR (with_unclaimed AND s.claim_expires_at IS NULL
                    AND EXISTS (SELECT 1 FROM dlq.events e
                                 WHERE e.request_id = s.replay_request_id
                                   AND e.at <= now() - timeout)))
         ORDER BY s.message_id
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED);

    /*
     * A message with a dedup_key whose key is meanwhile held by another open
     * (pending or review) message cannot go back to pending: it is folded
     * into that one, as dlq_nack does, and resolved with a "merged" event.
     * Going one by one also folds two returning messages with the same key.
     * A message that took the key after the check is found by looking again
     * once reopening this one fails on messages_dedup (issue 11, finding 7).
     * A key held by a transaction that stays open (a writer's uncommitted
     * dlq_store) past lock_timeout only puts this message off to the next
     * round.
     */
    FOR r IN SELECT m.message_id, m.queue, m.dedup_key, m.occurrences FROM dlq.messages m
              WHERE m.message_id = ANY (picked) AND m.slot = 0 AND m.dedup_key IS NOT NULL ORDER BY m.message_id LOOP
        BEGIN
            tries := 0;
            LOOP
                SELECT o.message_id INTO into_id FROM dlq.messages o
                 WHERE o.queue = r.queue AND o.dedup_key = r.dedup_key
                   AND o.status IN ('pending', 'review') AND o.slot = 0 AND o.message_id <> r.message_id
                   FOR UPDATE;
                EXIT WHEN into_id IS NOT NULL;
                /* the first of its key reopens now, so that later ones fold into it */
                BEGIN
                    UPDATE dlq.messages
                       SET status = CASE WHEN attempts >= max_attempts THEN 'review' ELSE 'pending' END::dlq.status,
                           claimed_by = NULL, claim_expires_at = NULL
                     WHERE message_id = r.message_id;
                    EXIT;
                EXCEPTION WHEN unique_violation THEN
                    /*
                     * A dlq_store, dlq_nack or another recovery made a
                     * message with the key open after the SELECT above
                     * looked: undone, look again and fold into that one.
                     */
                    GET STACKED DIAGNOSTICS conflict = CONSTRAINT_NAME;
                    tries := tries + 1;
                    IF conflict IS DISTINCT FROM 'messages_live_dedup' THEN
                        RAISE;
                    END IF;
                    IF tries >= 100 OR current_setting('transaction_isolation') <> 'read committed' THEN
                        RAISE EXCEPTION 'could not serialize access due to a concurrent store of the same dedup_key'
                            USING ERRCODE = 'serialization_failure',
                                  DETAIL = format('Message %s could not go back to pending: another open message of queue "%s" took its dedup_key.',
                                                  r.message_id, r.queue),
                                  HINT = 'Retry the transaction.';
                    END IF;
                END;
            END LOOP;
            IF into_id IS NOT NULL THEN
                UPDATE dlq.messages SET occurrences = occurrences + r.occurrences, last_failed_at = now()
                 WHERE message_id = into_id;
                UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),
                       claimed_by = NULL, claim_expires_at = NULL,
                       slot = (SELECT c.slot FROM dlq.slots c WHERE c.state = 'current')
                 WHERE message_id = r.message_id;
                INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
                VALUES (actor, 'merged', r.queue, 1, ARRAY[r.message_id],
                        jsonb_build_object('into', into_id, 'reason', 'replay timed out'));
                picked := array_remove(picked, r.message_id);
                folded := folded + 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            /*
             * Another transaction holds the key (an open message being
             * changed, or a dlq_store of it not committed yet) for longer
             * than the worker's lock_timeout: this message stays replaying
             * until the next round instead of failing the recovery of every
             * other one.
             */
            picked := array_remove(picked, r.message_id);
        END;
    END LOOP;

    WITH back AS (
        UPDATE dlq.messages m
           SET status = CASE WHEN m.attempts >= m.max_attempts
                             THEN 'review' ELSE 'pending' END::dlq.status,
               claimed_by = NULL,
               claim_expires_at = NULL,
               next_retry_at = CASE WHEN q.auto_retry AND m.attempts < m.max_attempts
                                    THEN now() + dlq.retry_delay(q, m.attempts + 1) END
          FROM dlq.queues q
         WHERE m.message_id = ANY (picked)
           AND q.queue = m.queue
        RETURNING m.queue, m.message_id, m.status, m.attempts
    ), chunked AS (
        /* at most 100 messages per event, so that each names its ids (src/history.h) */
        SELECT back.*, (row_number() OVER (PARTITION BY back.queue ORDER BY back.message_id) - 1) / 100 AS chunk
          FROM back
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
        SELECT actor, 'timed_out', c.queue, count(*),
               array_agg(c.message_id ORDER BY c.message_id),
               jsonb_build_object('pending', count(*) FILTER (WHERE c.status = 'pending'),
                                  'review', count(*) FILTER (WHERE c.status = 'review'),
                                  'timeout', timeout::text,
                                  'attempts', jsonb_agg(jsonb_build_object(
                                      'message_id', c.message_id, 'attempt', c.attempts,
                                      'sqlstate', NULL,
                                      'error', format('replay timed out: not acknowledged within %s s',
                                                      floor(extract(epoch FROM timeout))::bigint))
                                      ORDER BY c.message_id))
          FROM chunked c GROUP BY c.queue, c.chunk
    )
    SELECT count(*) INTO returned FROM back;
    RETURN returned + folded;
END
$$;
COMMENT ON FUNCTION dlq.worker_recover(integer, interval, text, boolean, text) IS
    'worker step: return at most batch_size replaying messages abandoned for longer than timeout to pending (or review), of one queue or (NULL) all; each returned message''s attempt is kept on its timed_out event';

/* ---- Trust: consumers and the store/nack race (consumer.c, store.c) ---- */

/*
 * dlq_nack (consumer.c) and the worker's recovery of abandoned replays both
 * reopen a replaying message unless another open message holds its
 * dedup_key, then fold into that one.  Between the check and the reopening
 * a concurrent dlq_store (or nack, or recovery) can commit a message with
 * the key: 1.0 then failed with a unique violation of messages_dedup, and
 * the worker's whole round with it.  Both now undo the reopening, look
 * again and fold.  dlq.worker_recover (above) has that loop; it also
 * skips (until the next round) a message whose key another transaction
 * holds past the worker's lock_timeout, where 1.0 failed the whole recovery:
 * any writer could stall it by keeping a dlq_store with that key open.
 */
/* dlq.worker_recover with that loop is defined once, in the section above. */



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

/* ---- Worker throttle and progress ---- */

/*
 * dlq.worker_status() gains, at the end, the progress of the round under
 * way (like pg_stat_progress_vacuum) and the time the worker slept for its
 * cost limit (dlq.worker_cost_limit, dlq.worker_cost_delay; src/worker.c).
 * Its columns change, so it is dropped and created again: no view or
 * function of the extension uses it.  The library returns 1.0's columns to
 * a 1.0 schema.
 */
DROP FUNCTION dlq.worker_status();
CREATE FUNCTION dlq.worker_status(
    OUT pid integer,
    OUT running boolean,
    OUT started_at timestamptz,
    OUT last_round_start timestamptz,
    OUT last_heartbeat timestamptz,
    OUT rounds bigint,
    OUT last_expired bigint,
    OUT last_purged bigint,
    OUT last_events_purged bigint,
    OUT last_recovered bigint,
    OUT last_retried bigint,
    OUT last_alerts bigint,
    OUT errors bigint,
    OUT last_error_at timestamptz,
    OUT last_error text,
    OUT step text,
    OUT step_queue text,
    OUT step_started_at timestamptz,
    OUT step_done bigint,
    OUT throttled boolean,
    OUT throttle_sleep interval,
    OUT last_throttle_sleep interval)
RETURNS record
LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'dlq_worker_status';
COMMENT ON FUNCTION dlq.worker_status() IS
    'the background worker of this database: pid, heartbeat, what its last round did, errors, the step under way (step, step_queue, step_started_at, step_done; NULL between rounds) and its throttle sleep (throttled now, this round, the last round); NULL when it has never run here';
REVOKE ALL ON FUNCTION dlq.worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dlq.worker_status() TO dlq_reader;

/* ---- Operator workflow (issue 13): new states and event kinds ---- */

/*
 * archived: resolved and expired messages past their queue's
 * resolved_retention, kept for archive_retention.  New event kinds: capped
 * (expired by max_messages), edited (dlq_edit), moved (dlq_move), archived.
 * A value added here cannot be used in this script while it runs (ALTER
 * EXTENSION UPDATE is one transaction): nothing below may spell them in a
 * SQL function body or an index predicate; C code and PL/pgSQL use them at
 * run time.
 */
ALTER TYPE dlq.status ADD VALUE 'archived';
ALTER TYPE dlq.event_kind ADD VALUE 'capped';
ALTER TYPE dlq.event_kind ADD VALUE 'edited';
ALTER TYPE dlq.event_kind ADD VALUE 'moved';
ALTER TYPE dlq.event_kind ADD VALUE 'archived';

/* ---- Operator workflow: queue settings, retry by error class, archive, cap (queue.c, worker) ---- */

/*
 * New queue settings (dlq_configure):
 *   retry_on             auto_retry retries 'transient' errors only (default) or 'all'
 *   transient_sqlstates  5-character codes or 2-character classes counted as transient
 *   permanent_sqlstates  ... as permanent; both override the built-in classes
 *   archive_retention    how long archived messages are kept; 0 = purged at
 *                        once after resolved_retention.  Queues that exist at
 *                        the update keep 1.0's behaviour (0); new ones get 90 days.
 *   max_messages         beyond this many open messages the worker expires the oldest
 *   components           when set, the only components dlq_store and dlq_list accept
 */
ALTER TABLE dlq.queues
    ADD COLUMN retry_on text NOT NULL DEFAULT 'transient' CHECK (retry_on IN ('transient', 'all')),
    ADD COLUMN transient_sqlstates text[],
    ADD COLUMN permanent_sqlstates text[],
    ADD COLUMN archive_retention interval NOT NULL DEFAULT '0' CHECK (archive_retention >= '0'),
    ADD COLUMN max_messages bigint CHECK (max_messages > 0),
    ADD COLUMN components text[];
ALTER TABLE dlq.queues ALTER COLUMN archive_retention SET DEFAULT '90 days';

/*
 * auto_retry retries transient errors only (retry_on 'transient', the
 * default), or every error (retry_on 'all').  Queues that exist at the
 * update keep 1.0's behaviour, in which auto_retry retried every message
 * whatever its SQLSTATE (including the many stored without one, which are
 * permanent): they get 'all', and an operator chooses 'transient' with
 * dlq_configure.  A fresh install has no queue here.
 */
UPDATE dlq.queues SET retry_on = 'all';

COMMENT ON COLUMN dlq.queues.retry_on IS
    'which messages auto_retry retries: transient (error_class transient only, the default) or all';
COMMENT ON COLUMN dlq.queues.transient_sqlstates IS
    'SQLSTATEs (5 characters) or classes (2) counted as transient on this queue, before the built-in classes';
COMMENT ON COLUMN dlq.queues.permanent_sqlstates IS
    'SQLSTATEs (5 characters) or classes (2) counted as permanent on this queue, before the built-in classes';
COMMENT ON COLUMN dlq.queues.max_messages IS
    'most open (pending, replaying, review) messages; beyond it the worker expires the oldest pending and review ones (event capped); NULL: no cap';
COMMENT ON COLUMN dlq.queues.components IS
    'the only components dlq_store accepts for this queue (NULL component always accepted); NULL: any';

/*
 * The error class of a SQLSTATE under a queue's overrides (src/store.c):
 * a listed 5-character code, then a listed 2-character class, permanent
 * before transient, then the built-in classes.  dlq_store and capture
 * compute error_class with it in their INSERT, dlq_configure recomputes
 * the open messages' with it, the worker decides retries with it.
 * Immutable and in C so that dlq_store's plan stays a plain index scan.
 */
CREATE FUNCTION dlq.sqlstate_class(sqlstate text, transient_sqlstates text[],
                                   permanent_sqlstates text[])
RETURNS text
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'dlq_sqlstate_class';
COMMENT ON FUNCTION dlq.sqlstate_class(text, text[], text[]) IS
    'error class (transient or permanent) of a SQLSTATE under a queue''s transient_sqlstates and permanent_sqlstates, then the built-in classes';

/* dlq_configure gains the settings above, at the end of its arguments. */
DROP FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
    boolean, boolean, interval, double precision, interval, bigint, interval);
CREATE FUNCTION @extschema@.dlq_configure(
    queue text,
    max_attempts integer DEFAULT NULL,
    retention interval DEFAULT NULL,
    resolved_retention interval DEFAULT NULL,
    replay_target regclass DEFAULT NULL,
    channel text DEFAULT NULL,
    require_listener boolean DEFAULT NULL,
    auto_retry boolean DEFAULT NULL,
    retry_base interval DEFAULT NULL,
    retry_factor double precision DEFAULT NULL,
    retry_max interval DEFAULT NULL,
    alert_threshold bigint DEFAULT NULL,
    alert_cooldown interval DEFAULT NULL,
    retry_on text DEFAULT NULL,
    transient_sqlstates text[] DEFAULT NULL,
    permanent_sqlstates text[] DEFAULT NULL,
    archive_retention interval DEFAULT NULL,
    max_messages bigint DEFAULT NULL,
    components text[] DEFAULT NULL)
RETURNS dlq.queues
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_configure';
COMMENT ON FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
    boolean, boolean, interval, double precision, interval, bigint, interval,
    text, text[], text[], interval, bigint, text[]) IS
    'change the named settings of a queue (NULL keeps one), creating it if new; replay_target => 0, max_messages => 0 and an empty array clear theirs';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass,
    text, boolean, boolean, interval, double precision, interval, bigint, interval,
    text, text[], text[], interval, bigint, text[]) TO dlq_operator;

/*
 * Automatic retries by error class: of the due messages, those auto_retry
 * may retry (retry_on 'all', or transient under the queue's overrides,
 * computed from the SQLSTATE now, whoever set next_retry_at: a nack, a
 * failed replay, the recovery of a timed-out one) are returned; the others
 * lose next_retry_at and wait for an operator, so that each is looked at
 * once and none crowds the retryable ones out of a batch.  Rows that others
 * hold are skipped until the next round.
 */
CREATE OR REPLACE FUNCTION dlq.worker_retry_due(batch_size integer)
RETURNS TABLE (queue text, message_ids bigint[])
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    retry bigint[];
    waiting bigint[];
BEGIN
    SELECT coalesce(array_agg(d.message_id) FILTER (WHERE d.retry), '{}'),
           coalesce(array_agg(d.message_id) FILTER (WHERE NOT d.retry), '{}')
      INTO retry, waiting
      FROM (SELECT m.message_id,
                   q.retry_on = 'all'
                   OR dlq.sqlstate_class(m.sqlstate, q.transient_sqlstates, q.permanent_sqlstates)
                      = 'transient' AS retry
              FROM dlq.messages m JOIN dlq.queues q ON q.queue = m.queue
             WHERE m.slot = 0 AND m.status = 'pending' AND m.next_retry_at <= now()
               AND q.auto_retry AND NOT q.paused
             ORDER BY m.next_retry_at
             LIMIT batch_size) d;
    /* Written only when there is something to write (a round takes no row lock otherwise). */
    IF cardinality(waiting) > 0 THEN
        UPDATE dlq.messages m SET next_retry_at = NULL
         WHERE m.slot = 0 AND m.message_id = ANY (ARRAY(
                   SELECT s.message_id FROM dlq.messages s
                    WHERE s.slot = 0 AND s.message_id = ANY (waiting)
                      AND s.status = 'pending' AND s.next_retry_at <= now()
                      FOR UPDATE SKIP LOCKED));
    END IF;
    RETURN QUERY
        SELECT m.queue, array_agg(m.message_id ORDER BY m.message_id)
          FROM dlq.messages m
         WHERE m.slot = 0 AND m.message_id = ANY (retry)
         GROUP BY m.queue
         ORDER BY m.queue;
END
$$;
COMMENT ON FUNCTION dlq.worker_retry_due(integer) IS
    'worker step: pending messages of auto_retry queues due for a retry that retry_on allows, at most batch_size looked at, grouped by queue; the due ones it does not allow lose next_retry_at';

/*
 * max_messages: a queue with more open (pending, replaying, review)
 * messages than that, as dlq.counts has it (no count of rows), has its
 * oldest pending and review messages (lowest message_id first) expired
 * until it is back at the cap; replaying ones are left to their consumer.
 * One 'capped' event per queue and batch, with the ids when at most 100.
 * Like dlq.worker_expire: at most batch_size messages, of one queue or
 * (NULL) every queue, rows others hold skipped.  PL/pgSQL, because the
 * event kind 'capped' is new in this script (see above).
 */
CREATE FUNCTION dlq.worker_cap(batch_size integer, actor text DEFAULT current_user,
                               queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q record;
    budget bigint := greatest(coalesce(batch_size, 0), 0);
    take bigint;
    picked bigint[];
    done bigint[];
    total bigint := 0;
BEGIN
    FOR q IN
        SELECT s.queue, s.max_messages, c.open
          FROM dlq.queues s
         CROSS JOIN LATERAL (
               SELECT coalesce(sum(n.n), 0) AS open FROM dlq.counts n
                WHERE n.queue = s.queue AND n.status IN ('pending', 'replaying', 'review')) c
         WHERE s.max_messages IS NOT NULL AND c.open > s.max_messages
           AND (worker_cap.queue IS NULL OR s.queue = worker_cap.queue)
         ORDER BY s.queue
    LOOP
        EXIT WHEN budget <= 0;
        take := least(q.open - q.max_messages, budget);
        picked := ARRAY(
            SELECT o.message_id
              FROM ((SELECT m.message_id FROM dlq.messages m
                      WHERE m.slot = 0 AND m.queue = q.queue AND m.status = 'pending'
                      ORDER BY m.message_id LIMIT take)
                    UNION ALL
                    (SELECT m.message_id FROM dlq.messages m
                      WHERE m.slot = 0 AND m.queue = q.queue AND m.status = 'review'
                      ORDER BY m.message_id LIMIT take)) o
             ORDER BY o.message_id
             LIMIT take);
        WITH gone AS (
            UPDATE dlq.messages m
               SET status = 'expired', resolved_at = now(), next_retry_at = NULL,
                   slot = (SELECT r.slot FROM dlq.slots r WHERE r.state = 'current')
             WHERE m.slot = 0 AND m.message_id = ANY (ARRAY(
                       SELECT s.message_id FROM dlq.messages s
                        WHERE s.slot = 0 AND s.message_id = ANY (picked)
                          AND s.status IN ('pending', 'review')
                          FOR UPDATE SKIP LOCKED))
            RETURNING m.message_id
        )
        SELECT array_agg(gone.message_id ORDER BY gone.message_id) INTO done FROM gone;
        CONTINUE WHEN done IS NULL;
        INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
        VALUES (actor, 'capped', q.queue, cardinality(done),
                CASE WHEN cardinality(done) <= 100 THEN done END,
                jsonb_build_object('max_messages', q.max_messages, 'open', q.open));
        total := total + cardinality(done);
        budget := budget - cardinality(done);
    END LOOP;
    RETURN total;
END
$$;
COMMENT ON FUNCTION dlq.worker_cap(integer, text, text) IS
    'worker step: expire the oldest pending and review messages of queues above max_messages open messages, at most batch_size, of one queue or (NULL) all; audited as capped; returns how many';


/* ---- Operator workflow: list filters and facets (list.c, facets.c) ---- */

/*
 * dlq_list and dlq_list_page gain the filters error_class, since and until
 * (stored_at >= since AND stored_at < until), and status 'archived' ('any'
 * covers it too).  Their argument lists grow, so they are dropped and
 * created again; the library still serves 1.0's seven arguments.
 *
 * A page filtered by sqlstate must be a bounded range scan like one by
 * component, so it needs an index whose prefix is (queue, status, sqlstate)
 * and whose last key is message_id (src/list.c, list_page_sql).  Every
 * index slows dlq_store, so there is exactly one more, and it serves three
 * things: sqlstate pages, and the sqlstate and error_class facets of
 * dlq_facets as index-only scans (error_class is an INCLUDE column: a few
 * bytes more per entry, no second index).  The alternatives cost more or
 * do not bound the page: widening the component index to (queue, status,
 * component, sqlstate, message_id) serves sqlstate only under a component,
 * and a page by sqlstate alone would walk every entry of the state; an
 * index on stored_at for since and until is not needed (list_time_bounds
 * maps them onto message_id through the primary key).  Created on the
 * parent, it is created on every partition (adopting the live partition's,
 * named like the other indexes there).
 */
CREATE INDEX messages_live_queue_status_sqlstate_id ON dlq.messages_live (queue, status, sqlstate, message_id)
    INCLUDE (error_class);
CREATE INDEX messages_queue_status_sqlstate_id ON dlq.messages (queue, status, sqlstate, message_id)
    INCLUDE (error_class);

DROP FUNCTION @extschema@.dlq_list(text, bigint, integer, text, text, text, boolean);
CREATE FUNCTION @extschema@.dlq_list(
    queue text DEFAULT NULL,
    cursor bigint DEFAULT NULL,
    batch_size integer DEFAULT 100,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    newest_first boolean DEFAULT false,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL)
RETURNS SETOF dlq.message
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 100
AS 'MODULE_PATHNAME', 'dlq_list';
COMMENT ON FUNCTION @extschema@.dlq_list(text, bigint, integer, text, text, text, boolean, text, timestamptz, timestamptz) IS
    'one keyset page of messages after cursor (before it when newest_first), filtered by status, component, sqlstate, error_class and stored_at in [since, until); non-destructive';
GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_list(text, bigint, integer, text, text, text, boolean, text, timestamptz, timestamptz)
    TO dlq_reader;

DROP FUNCTION @extschema@.dlq_list_page(text, bigint, integer, text, text, text, boolean);
CREATE FUNCTION @extschema@.dlq_list_page(
    queue text DEFAULT NULL,
    cursor bigint DEFAULT NULL,
    batch_size integer DEFAULT 100,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    newest_first boolean DEFAULT false,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_list_page';
COMMENT ON FUNCTION @extschema@.dlq_list_page(text, bigint, integer, text, text, text, boolean, text, timestamptz, timestamptz) IS
    'the page of dlq_list as {"messages": [...], "next_cursor": id|null, "has_more": bool}';
GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_list_page(text, bigint, integer, text, text, text, boolean, text, timestamptz, timestamptz)
    TO dlq_reader;

/*
 * dlq_facets (src/facets.c): how a queue's messages in one state split by
 * component, sqlstate, error_class, status or source_relation, with each
 * part's count and the stored_at of its first and last message.
 */
CREATE FUNCTION @extschema@.dlq_facets(
    queue text DEFAULT NULL,
    by text DEFAULT 'sqlstate',
    status text DEFAULT 'pending')
RETURNS TABLE (
    queue       text,
    value       text,
    count       bigint,
    oldest_at   timestamptz,
    newest_at   timestamptz)
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 20
AS 'MODULE_PATHNAME', 'dlq_facets';
COMMENT ON FUNCTION @extschema@.dlq_facets(text, text, text) IS
    'messages of a queue (or all) in a state (or any) counted by component, sqlstate, error_class, status or source_relation, largest first, with the stored_at of the first and last of each';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_facets(text, text, text) TO dlq_reader;

/* ---- Operator workflow: bulk calls, filters, dry runs, resolution, move (replay.c, lifecycle.c, move.c) ---- */

/*
 * Filters on the bulk calls (src/filter.c): component, sqlstate (a 5-character
 * code), error_class ('transient' | 'permanent'), since and until (stored_at >=
 * since AND stored_at < until), each NULL for "any"; and dry_run: the same
 * summary, nothing changed, no event, no notification.  A function whose
 * arguments grow is dropped and created again with its new arguments after
 * the old ones, so that 1.0's positional calls keep working; the library
 * still serves 1.0's shorter signatures (PG_NARGS) until the update.
 *
 * resolution: how a resolved message was closed by dlq_resolve or
 * dlq_resolve_all (fixed, ignored, duplicate, manual); NULL for messages
 * closed by a replay or an ack.  The API's row type dlq.message gets it at
 * its end.
 */
ALTER TABLE dlq.messages ADD COLUMN resolution text
    CONSTRAINT messages_resolution_check CHECK (resolution IN ('fixed', 'ignored', 'duplicate', 'manual'));
COMMENT ON COLUMN dlq.messages.resolution IS
    'how dlq_resolve or dlq_resolve_all closed the message: fixed, ignored, duplicate or manual; NULL otherwise';

CREATE OR REPLACE VIEW dlq.message AS
    SELECT message_id, queue, component, status, payload, error, sqlstate, error_class,
           error_detail, metadata, dedup_key, occurrences, attempts, max_attempts, stored_at,
           last_failed_at, expires_at, next_retry_at, replay_request_id, claimed_by,
           claim_expires_at, resolved_at, source_relation, operation, resolution
      FROM dlq.messages;

DROP FUNCTION @extschema@.dlq_reprocess(bigint[], boolean);
CREATE FUNCTION @extschema@.dlq_reprocess(
    message_ids bigint[],
    force boolean DEFAULT false,
    reason text DEFAULT NULL,
    ticket text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_reprocess';
COMMENT ON FUNCTION @extschema@.dlq_reprocess(bigint[], boolean, text, text) IS
    'replay messages: re-apply captured rows, or hand them to consumers with one NOTIFY per queue; force redrives review messages; reason and ticket go on the audit events';

DROP FUNCTION @extschema@.dlq_reprocess_all(text, text, integer, boolean);
CREATE FUNCTION @extschema@.dlq_reprocess_all(
    queue text,
    component text DEFAULT NULL,
    max_messages integer DEFAULT NULL,
    force boolean DEFAULT false,
    sqlstate text DEFAULT NULL,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    dry_run boolean DEFAULT false,
    reason text DEFAULT NULL,
    ticket text DEFAULT NULL)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_reprocess_all';
COMMENT ON FUNCTION @extschema@.dlq_reprocess_all(text, text, integer, boolean, text, text,
    timestamptz, timestamptz, boolean, text, text) IS
    'replay every pending message of a queue (and review ones with force) that passes the filters, oldest first, in bounded batches; dry_run only counts';

DROP FUNCTION @extschema@.dlq_discard_all(text, text, text, interval);
CREATE FUNCTION @extschema@.dlq_discard_all(
    queue text,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    older_than interval DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_discard_all';
COMMENT ON FUNCTION @extschema@.dlq_discard_all(text, text, text, interval, text, text,
    timestamptz, timestamptz, boolean) IS
    'delete every message of a queue in one status that passes the filters, in bounded batches; audited; dry_run only counts';

DROP FUNCTION @extschema@.dlq_resolve(bigint[], text);
CREATE FUNCTION @extschema@.dlq_resolve(
    message_ids bigint[],
    note text DEFAULT NULL,
    resolution text DEFAULT 'manual')
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_resolve';
COMMENT ON FUNCTION @extschema@.dlq_resolve(bigint[], text, text) IS
    'close open messages without replay, with a resolution (fixed, ignored, duplicate, manual) kept on them; audited with the note';

CREATE FUNCTION @extschema@.dlq_resolve_all(
    queue text,
    status text DEFAULT 'pending',
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    note text DEFAULT NULL,
    resolution text DEFAULT 'manual',
    dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_resolve_all';
COMMENT ON FUNCTION @extschema@.dlq_resolve_all(text, text, text, text, text, timestamptz,
    timestamptz, text, text, boolean) IS
    'close every pending (or review) message of a queue that passes the filters without replay, in bounded batches; audited; dry_run only counts';

/*
 * Redrive to another queue (src/move.c): open messages (pending, review) go
 * to an existing queue with their payload, error, attempts, dedup_key and
 * source_relation; they take the target's max_attempts and retention, and
 * are pending, or review when their attempts already reach the target's
 * max_attempts.  A message whose dedup_key an open message of the target
 * holds stays where it is (a conflict), as does one the target would never
 * replay: into a queue bound to a table only rows captured from that table
 * move, and the target's components list applies.  One 'moved' event on
 * each side.
 */
CREATE FUNCTION @extschema@.dlq_move(message_ids bigint[], target_queue text)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_move';
COMMENT ON FUNCTION @extschema@.dlq_move(bigint[], text) IS
    'move open messages to another queue (redrive to a custom destination); replaying ones and dedup_key conflicts stay; audited on both queues';

CREATE FUNCTION @extschema@.dlq_move_all(
    queue text,
    target_queue text,
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    max_messages integer DEFAULT NULL,
    dry_run boolean DEFAULT false)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_move_all';
COMMENT ON FUNCTION @extschema@.dlq_move_all(text, text, text, text, text, timestamptz,
    timestamptz, integer, boolean) IS
    'move the open messages of a queue that pass the filters to another queue, oldest first, in bounded batches; audited; dry_run only counts';

GRANT EXECUTE ON FUNCTION
    @extschema@.dlq_reprocess(bigint[], boolean, text, text),
    @extschema@.dlq_reprocess_all(text, text, integer, boolean, text, text,
        timestamptz, timestamptz, boolean, text, text),
    @extschema@.dlq_discard_all(text, text, text, interval, text, text,
        timestamptz, timestamptz, boolean),
    @extschema@.dlq_resolve(bigint[], text, text),
    @extschema@.dlq_resolve_all(text, text, text, text, text, timestamptz,
        timestamptz, text, text, boolean),
    @extschema@.dlq_move(bigint[], text),
    @extschema@.dlq_move_all(text, text, text, text, text, timestamptz,
        timestamptz, integer, boolean)
    TO dlq_operator;

/* ---- Operator workflow: edit, attempt history, SQLSTATEs (edit.c, history) ---- */

/*
 * dlq_edit (src/edit.c): fix the payload of a pending or review message
 * before it is replayed; the old payload is kept in the "edited" event.
 * Operators only: it changes what a replay hands out or re-applies.
 */
CREATE FUNCTION @extschema@.dlq_edit(message_id bigint, payload jsonb, note text DEFAULT NULL)
RETURNS dlq.message
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_edit';
COMMENT ON FUNCTION @extschema@.dlq_edit(bigint, jsonb, text) IS
    'replace the payload of a pending or review message (55000 otherwise); the old payload and the note are kept in an "edited" event';
REVOKE ALL ON FUNCTION @extschema@.dlq_edit(bigint, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.dlq_edit(bigint, jsonb, text) TO dlq_operator;

/*
 * Every failed replay attempt keeps its SQLSTATE and error (src/history.h):
 * the events that end attempts with a failure (replay_failed, nacked,
 * timed_out) carry in their detail "attempts", an array of
 * {"message_id", "attempt", "sqlstate", "error"} (the error clipped to
 * 1000 bytes), and name at most 100 messages each, so that
 * events_message_ids finds every one.  dlq_history gains, at the end, the
 * attempt, sqlstate and error of its message in such an event (NULL for
 * other events); its result type changes, so it is dropped and created
 * again.  No kind is spelled in its body (ALTER EXTENSION UPDATE may not
 * use the kinds it adds).
 */
DROP FUNCTION @extschema@.dlq_history(bigint);
CREATE FUNCTION @extschema@.dlq_history(message_id bigint)
RETURNS TABLE (
    event_id        bigint,
    at              timestamptz,
    actor           text,
    kind            dlq.event_kind,
    queue           text,
    request_id      uuid,
    message_count   bigint,
    message_ids     bigint[],
    detail          jsonb,
    attempt         integer,
    sqlstate        text,
    error           text)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.event_id, e.at, e.actor, e.kind, e.queue, e.request_id, e.message_count,
           e.message_ids, e.detail, a.attempt, a.sqlstate, a.error
      FROM (SELECT e.* FROM dlq.events e
             WHERE e.message_ids OPERATOR(pg_catalog.@>) ARRAY[$1]
            UNION
            SELECT e.* FROM dlq.events e JOIN dlq.messages m ON m.replay_request_id = e.request_id
             WHERE m.message_id = $1 AND e.message_ids IS NULL) e
      LEFT JOIN LATERAL (
            SELECT x.attempt, x.sqlstate, x.error
              FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(e.detail -> 'attempts') = 'array'
                                           THEN e.detail -> 'attempts' END)
                   AS x(message_id bigint, attempt integer, sqlstate text, error text)
             WHERE x.message_id = $1
             LIMIT 1) a ON true
     ORDER BY e.event_id
$$;
COMMENT ON FUNCTION @extschema@.dlq_history(bigint) IS
    'audit events of one message (those naming it, and those of its last replay request); for a failed replay attempt also its number, SQLSTATE and error';
REVOKE ALL ON FUNCTION @extschema@.dlq_history(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.dlq_history(bigint) TO dlq_reader;

/* ---- Operator workflow: totals, alerts, metrics (counts.c, status.c) ---- */

/*
 * Cumulative per-queue totals, for Prometheus rate(): how many messages
 * were stored (new ones and dedup folds, i.e. every occurrence), replayed,
 * failed a replay, resolved by dlq_resolve, discarded and expired since the
 * queue was created.  They are columns of dlq.counts, written by the same
 * statement trigger (src/counts.c) in the same row updates at commit as
 * the counts, in the writer's own shard: a dlq_store adds nothing but
 * a few columns to the update it already made.  Totals live in the rows
 * of the open messages' shards (shard >= 0), never in a slot's (which
 * dlq.slot_empty takes away).  dlq.recount() and TRUNCATE dlq.messages
 * reset the counts and keep the totals; dlq.counts is in pg_dump's data
 * (Storage, above), so a dump and restore keeps them too.  Updating from
 * 1.0 starts them at 0.
 */
ALTER TABLE dlq.counts
    ADD COLUMN stored_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN replayed_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN replay_failed_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN resolved_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN discarded_total bigint NOT NULL DEFAULT 0,
    ADD COLUMN expired_total bigint NOT NULL DEFAULT 0;
COMMENT ON TABLE dlq.counts IS
    'message counts per queue, state and writer shard, and cumulative totals per queue, kept by triggers on dlq.messages; dlq.recount() rebuilds the counts and keeps the totals';
COMMENT ON COLUMN dlq.counts.stored_total IS
    'messages stored, dedup folds included (every occurrence), since the queue began (sum over rows)';
COMMENT ON COLUMN dlq.counts.replayed_total IS
    'messages replayed successfully: acknowledged by a consumer or re-applied to their table';
COMMENT ON COLUMN dlq.counts.replay_failed_total IS
    'replay attempts that failed: nacked, timed out, or a re-apply to the table that raised an error';
COMMENT ON COLUMN dlq.counts.resolved_total IS
    'open messages closed without a replay (dlq_resolve)';
COMMENT ON COLUMN dlq.counts.discarded_total IS
    'open messages deleted (dlq_discard, dlq_discard_all); purges of closed ones are not counted';
COMMENT ON COLUMN dlq.counts.expired_total IS
    'open messages expired (past expires_at, or beyond max_messages)';

/*
 * Rebuild the counts from the messages, messages in a slot of a ring in
 * that slot's shards (src/counts.c); the totals cannot be rebuilt and stay.
 */
CREATE OR REPLACE FUNCTION dlq.recount() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total bigint;
BEGIN
    LOCK TABLE dlq.messages IN SHARE MODE;
    DELETE FROM dlq.counts c
     WHERE c.shard < 0
        OR (c.stored_total, c.replayed_total, c.replay_failed_total,
            c.resolved_total, c.discarded_total, c.expired_total) = (0, 0, 0, 0, 0, 0);
    UPDATE dlq.counts c SET n = 0, last_failed_at = NULL;
    INSERT INTO dlq.counts AS c (queue, status, shard, n, last_failed_at)
        SELECT m.queue, m.status, CASE WHEN m.slot > 0 THEN -(m.slot * 64 + 1) ELSE 0 END,
               count(*), max(m.last_failed_at)
          FROM dlq.messages m GROUP BY 1, 2, 3
        ON CONFLICT (queue, status, shard) DO UPDATE
           SET n = excluded.n, last_failed_at = excluded.last_failed_at;
    SELECT coalesce(sum(c.n), 0) INTO total FROM dlq.counts c;
    RETURN total;
END
$$;
COMMENT ON FUNCTION dlq.recount() IS
    'rebuild the counts of dlq.counts from dlq.messages (the cumulative totals stay); returns the number of messages counted';

/*
 * dlq.metrics gains the totals, one row per queue (of dlq.queues) and
 * total, named for Prometheus counters: dlq_messages_<what>_total.
 */
CREATE OR REPLACE VIEW dlq.metrics AS
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
 WHERE f.value IS NOT NULL
UNION ALL
SELECT f.metric, q.queue, NULL, NULL, f.value
  FROM dlq.queues q
  LEFT JOIN (SELECT c.queue, sum(c.stored_total) AS stored, sum(c.replayed_total) AS replayed,
                    sum(c.replay_failed_total) AS replay_failed, sum(c.resolved_total) AS resolved,
                    sum(c.discarded_total) AS discarded, sum(c.expired_total) AS expired
               FROM dlq.counts c WHERE c.shard >= 0 GROUP BY c.queue) t ON t.queue = q.queue
 CROSS JOIN LATERAL (VALUES
        ('dlq_messages_stored_total', coalesce(t.stored, 0)::float8),
        ('dlq_messages_replayed_total', coalesce(t.replayed, 0)::float8),
        ('dlq_messages_replay_failed_total', coalesce(t.replay_failed, 0)::float8),
        ('dlq_messages_resolved_total', coalesce(t.resolved, 0)::float8),
        ('dlq_messages_discarded_total', coalesce(t.discarded, 0)::float8),
        ('dlq_messages_expired_total', coalesce(t.expired, 0)::float8))
        AS f(metric, value);
COMMENT ON VIEW dlq.metrics IS
    'etl_status as one row per queue or stage and figure, and each queue''s cumulative totals (*_total), with Prometheus metric names (contrib/prometheus/README.md)';

/*
 * Alerts carry an id, a time and a sentence: each is an 'alert' event in
 * dlq.events (its event_id is the alert_id), the NOTIFY payload on
 * dlq_alerts gains "alert_id", "at" and "message", and the worker writes
 * the message to the server log (LOG) once the alert has committed.  The
 * step returns one row per alert (id, severity, message) instead of their
 * number.
 */
DROP FUNCTION dlq.worker_alert();
CREATE FUNCTION dlq.worker_alert(actor text DEFAULT current_user)
RETURNS TABLE (alert_id bigint, severity text, message text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    /*
     * Most rounds raise nothing: they read dlq.counts and dlq.queues only,
     * and the statement below (which also locks the messages and
     * dlq.events) runs when a queue looks due.  Fewer locks per round, less
     * to collide with a DROP EXTENSION or other DDL running meanwhile.
     */
    IF NOT EXISTS (
        SELECT 1
          FROM dlq.counts c JOIN dlq.queues q ON q.queue = c.queue
         WHERE c.status IN ('pending', 'replaying')
           AND (q.last_alert_at IS NULL OR q.last_alert_at <= now() - q.alert_cooldown)
         GROUP BY q.queue, q.alert_threshold
        HAVING sum(c.n) >= q.alert_threshold) THEN
        RETURN;
    END IF;
    /*
     * Depth comes from dlq.counts (kept at commit by the counts triggers),
     * not from counting a million index entries; the oldest open message
     * is the first entry of its queue's (queue, status, message_id) range,
     * written as a row comparison so that no plan walks the primary key
     * through other queues.
     */
    RETURN QUERY
    WITH depth AS (
        SELECT c.queue, sum(c.n) AS depth
          FROM dlq.counts c
         WHERE c.status IN ('pending', 'replaying')
         GROUP BY c.queue
    ), due AS (
        SELECT q.queue, q.alert_threshold, d.depth
          FROM dlq.queues q JOIN depth d ON d.queue = q.queue
         WHERE (q.last_alert_at IS NULL OR q.last_alert_at <= now() - q.alert_cooldown)
           AND d.depth >= q.alert_threshold
           FOR UPDATE OF q SKIP LOCKED
    ), facts AS (
        SELECT d.queue, d.depth, d.alert_threshold,
               CASE WHEN d.depth >= 5 * d.alert_threshold THEN 'critical' ELSE 'warning' END AS severity,
               least(
                   (SELECT m.stored_at FROM dlq.messages m
                     WHERE (m.queue, m.status, m.message_id) > (d.queue, 'pending'::dlq.status, 0)
                       AND (m.queue, m.status) <= (d.queue, 'pending'::dlq.status)
                     ORDER BY m.queue, m.status, m.message_id LIMIT 1),
                   (SELECT m.stored_at FROM dlq.messages m
                     WHERE (m.queue, m.status, m.message_id) > (d.queue, 'replaying'::dlq.status, 0)
                       AND (m.queue, m.status) <= (d.queue, 'replaying'::dlq.status)
                     ORDER BY m.queue, m.status, m.message_id LIMIT 1)) AS oldest_at
          FROM due d
    ), aged AS (
        /* a store that began after this transaction did is not in the future: 0 */
        SELECT f.queue, f.depth, f.alert_threshold, f.severity,
               CASE WHEN f.oldest_at IS NOT NULL
                    THEN greatest(0, floor(extract(epoch FROM now() - f.oldest_at)))::bigint END AS oldest
          FROM facts f
    ), said AS (
        SELECT f.*,
               format('queue "%s" has %s pending or replaying %s (threshold %s)%s',
                      f.queue, f.depth, CASE WHEN f.depth = 1 THEN 'message' ELSE 'messages' END,
                      f.alert_threshold,
                      CASE WHEN f.oldest IS NULL THEN ''
                           ELSE ', oldest ' || CASE WHEN f.oldest < 120 THEN f.oldest || ' s'
                                                    WHEN f.oldest < 7200 THEN f.oldest / 60 || ' min'
                                                    WHEN f.oldest < 172800 THEN f.oldest / 3600 || ' h'
                                                    ELSE f.oldest / 86400 || ' d' END END) AS message
          FROM aged f
    ), ev AS (
        INSERT INTO dlq.events (actor, kind, queue, message_count, detail)
        SELECT worker_alert.actor, 'alert', s.queue, 0,
               jsonb_build_object('depth', s.depth, 'threshold', s.alert_threshold,
                                  'severity', s.severity, 'oldest_age_seconds', s.oldest,
                                  'message', s.message)
          FROM said s
        RETURNING event_id, at, queue, detail
    ), mark AS (
        UPDATE dlq.queues q SET last_alert_at = now()
          FROM ev WHERE q.queue = ev.queue
    ), sent AS (
        SELECT ev.event_id, ev.detail, pg_notify('dlq_alerts',
                   (ev.detail || jsonb_build_object('queue', ev.queue, 'alert_id', ev.event_id,
                                                    'at', ev.at))::text) AS notified
          FROM ev
    )
    SELECT s.event_id, s.detail ->> 'severity', s.detail ->> 'message' FROM sent s ORDER BY s.event_id;
END
$$;
COMMENT ON FUNCTION dlq.worker_alert(text) IS
    'worker step: for every queue past its alert_threshold and out of its alert_cooldown, an alert event, a NOTIFY on dlq_alerts and a row (id, severity, message) for the server log';

/* ---- Processing (issue 14): queue settings replay_handler, retry_stop_ratio (queue.c) ---- */

/*
 * New queue settings (dlq_configure, DESIGN 7.3):
 *   replay_handler    a function replays call once per message, with the payload
 *                     (jsonb) or the message (dlq.message); returning is success
 *   retry_stop_ratio  automatic retries and redrive tasks pause when a batch's
 *                     failure ratio passes it
 * A queue replays into a table (replay_target) or through a handler, not both.
 */
ALTER TABLE dlq.queues
    ADD COLUMN replay_handler regprocedure,
    ADD COLUMN retry_stop_ratio double precision
        CHECK (retry_stop_ratio > 0 AND retry_stop_ratio <= 1),
    ADD CONSTRAINT queues_one_replay_kind
        CHECK (replay_target IS NULL OR replay_handler IS NULL);
COMMENT ON COLUMN dlq.queues.replay_handler IS
    'function replays call once per message, with the payload (jsonb) or the message (dlq.message), as the replaying role; returning resolves the message, an error is its failure; NULL: none';
/*
 * The handler's owner when it was bound: a handler runs as its owner, and
 * refuses to run once another role owns it (ALTER FUNCTION ... OWNER TO,
 * REASSIGN OWNED) until that role binds it again.
 */
ALTER TABLE dlq.queues ADD COLUMN replay_handler_owner regrole;
COMMENT ON COLUMN dlq.queues.replay_handler_owner IS
    'owner of replay_handler when it was bound; replays refuse (42501) once the function has another owner';
COMMENT ON COLUMN dlq.queues.retry_stop_ratio IS
    'automatic retries and redrive tasks of this queue pause when more than this share of a batch fails; NULL: never';

DROP FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
    boolean, boolean, interval, double precision, interval, bigint, interval,
    text, text[], text[], interval, bigint, text[]);
CREATE FUNCTION @extschema@.dlq_configure(
    queue text,
    max_attempts integer DEFAULT NULL,
    retention interval DEFAULT NULL,
    resolved_retention interval DEFAULT NULL,
    replay_target regclass DEFAULT NULL,
    channel text DEFAULT NULL,
    require_listener boolean DEFAULT NULL,
    auto_retry boolean DEFAULT NULL,
    retry_base interval DEFAULT NULL,
    retry_factor double precision DEFAULT NULL,
    retry_max interval DEFAULT NULL,
    alert_threshold bigint DEFAULT NULL,
    alert_cooldown interval DEFAULT NULL,
    retry_on text DEFAULT NULL,
    transient_sqlstates text[] DEFAULT NULL,
    permanent_sqlstates text[] DEFAULT NULL,
    archive_retention interval DEFAULT NULL,
    max_messages bigint DEFAULT NULL,
    components text[] DEFAULT NULL,
    replay_handler regprocedure DEFAULT NULL,
    retry_stop_ratio double precision DEFAULT NULL)
RETURNS dlq.queues
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_configure';
COMMENT ON FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass, text,
    boolean, boolean, interval, double precision, interval, bigint, interval,
    text, text[], text[], interval, bigint, text[], regprocedure, double precision) IS
    'change the named settings of a queue (NULL keeps one), creating it if new; replay_target => 0, replay_handler => 0, max_messages => 0, retry_stop_ratio => 0 and an empty array clear theirs';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_configure(text, integer, interval, interval, regclass,
    text, boolean, boolean, interval, double precision, interval, bigint, interval,
    text, text[], text[], interval, bigint, text[], regprocedure, double precision) TO dlq_operator;

/* ---- Processing: handler replays, failures caught per message in batched subtransactions (replay.c, handler.c) ---- */

/* ---- Processing: reject limits and COPY line numbers (attach.c, capture.c) ---- */

/*
 * dlq_attach gains reject limits: a statement (INSERT, UPDATE, COPY) on the
 * table that diverts more than max_errors rows, or more than
 * max_error_ratio of its rows (of at least 100), fails with SQLSTATE DLQ02
 * and keeps nothing.  They live in the arguments of a BEFORE STATEMENT
 * trigger dlq_attach makes (src/capture.c), so they go with the table
 * through pg_dump; dlq_attach again on the attached table changes them.
 * The library still serves 1.0's three arguments (PG_NARGS).
 */
DROP FUNCTION @extschema@.dlq_attach(regclass, text, text);
CREATE FUNCTION @extschema@.dlq_attach(
    target regclass,
    queue text DEFAULT NULL,
    mode text DEFAULT 'validate',
    max_errors bigint DEFAULT NULL,
    max_error_ratio double precision DEFAULT NULL)
RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_attach';
COMMENT ON FUNCTION @extschema@.dlq_attach(regclass, text, text, bigint, double precision) IS
    'capture failed rows of a table you own into a queue (default: the table name) and replay into it; an existing queue must be unbound and created by you; mode validate or isolate; max_errors and max_error_ratio fail a statement that diverts more (DLQ02); on an attached table, sets those limits; returns the queue';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_attach(regclass, text, text, bigint, double precision)
    TO dlq_writer, dlq_operator;

COMMENT ON FUNCTION @extschema@.dlq_capture() IS
    'BEFORE INSERT OR UPDATE row trigger (queue [, component]): rows that would violate NOT NULL, CHECK, UNIQUE or FOREIGN KEY go to the DLQ and are skipped; as a BEFORE statement trigger (queue, ''max_errors=n'', ''max_error_ratio=r''), the statement''s reject limits; from COPY, metadata copy_line';

/*
 * Isolate mode's intake trigger inserts into the table its view reads (the
 * view's query, which follows renames and pg_dump writes by name), no longer
 * into the table whose OID its second argument holds: that OID named
 * nothing, or another table, after pg_restore.  dlq_attach writes the
 * table's name there now, for readers; triggers with an OID keep working.
 */
COMMENT ON FUNCTION @extschema@.dlq_capture_isolate() IS
    'INSTEAD OF INSERT row trigger of an intake view (queue, table [, component]): inserts each row, in a subtransaction, into the table the view reads (the table argument is not read); failures go to the DLQ';

/* ---- Processing: redrive tasks and early stop (redrive.c, worker) ---- */

/*
 * Redrive tasks (DESIGN 7.3, like SQS's message move tasks): an operator
 * starts one with dlq_redrive_start, the worker replays its messages at
 * rate_per_second through dlq_reprocess, as the role that started it, one
 * small transaction per tick, and the task's cursor is committed with each
 * replay.  Early stop: a task pauses, and a queue's automatic retries stop,
 * when the failure ratio of a batch of synchronous replays passes the
 * queue's retry_stop_ratio; both resume by themselves at a recorded time.
 * The new event kinds cannot be spelled in this script's SQL bodies (see
 * "new states and event kinds" above): the functions below that write them
 * are PL/pgSQL, and C writes the others.
 */
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_started';
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_paused';
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_resumed';
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_finished';
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_cancelled';
ALTER TYPE dlq.event_kind ADD VALUE 'redrive_failed';
ALTER TYPE dlq.event_kind ADD VALUE 'retry_stopped';
ALTER TYPE dlq.event_kind ADD VALUE 'retry_resumed';

/*
 * One row per redrive task.  A task covers the messages of its queue that
 * existed when it started (message_id <= last_id), pending ones (and review
 * ones with force) that pass its filters, in message_id order: cursor is the
 * last message_id it has handed to dlq_reprocess, committed in the same
 * transaction as that replay, so that a restart neither skips nor repeats a
 * message.  At most one task per queue is running or paused at a time.
 */
CREATE TABLE dlq.redrive_tasks (
    task_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               text NOT NULL,
    state               text NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'paused', 'finished', 'cancelled', 'failed')),
    rate_per_second     integer NOT NULL CHECK (rate_per_second > 0),
    component           text,
    sqlstate            text,
    error_class         text,
    since               timestamptz,
    until               timestamptz,
    force               boolean NOT NULL DEFAULT false,
    max_messages        bigint CHECK (max_messages > 0),
    reason              text,
    ticket              text,
    created_by          regrole NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    end_reason          text,
    last_id             bigint NOT NULL,
    total               bigint NOT NULL,
    cursor              bigint NOT NULL DEFAULT 0,
    taken               bigint NOT NULL DEFAULT 0,
    moved               bigint NOT NULL DEFAULT 0,
    failed              bigint NOT NULL DEFAULT 0,
    skipped             bigint NOT NULL DEFAULT 0,
    tokens              double precision NOT NULL DEFAULT 0,
    last_tick_at        timestamptz NOT NULL DEFAULT now(),
    window_done         integer NOT NULL DEFAULT 0,
    window_failed       integer NOT NULL DEFAULT 0,
    pauses              integer NOT NULL DEFAULT 0,
    paused_at           timestamptz,
    paused_reason       text,
    resume_at           timestamptz
);
CREATE UNIQUE INDEX redrive_tasks_active ON dlq.redrive_tasks (queue)
    WHERE state IN ('running', 'paused');
COMMENT ON TABLE dlq.redrive_tasks IS
    'redrive tasks (dlq_redrive_start): the worker replays a queue''s messages at rate_per_second as created_by; at most one running or paused task per queue';
COMMENT ON COLUMN dlq.redrive_tasks.state IS
    'running, paused (early stop or a failed replay; resumes at resume_at), finished, cancelled (dlq_redrive_cancel) or failed (queue or role gone; end_reason says why)';
COMMENT ON COLUMN dlq.redrive_tasks.created_by IS
    'the role that started the task: its replays run as it, privileges checked again at every tick';
COMMENT ON COLUMN dlq.redrive_tasks.last_id IS
    'the newest message_id when the task started: later messages are not part of it';
COMMENT ON COLUMN dlq.redrive_tasks.total IS
    'candidates when the task started (at most max_messages), for the eta';
COMMENT ON COLUMN dlq.redrive_tasks.cursor IS
    'the last message_id handed to dlq_reprocess, committed with that replay';
COMMENT ON COLUMN dlq.redrive_tasks.taken IS
    'candidates handed to dlq_reprocess so far (max_messages counts these)';
COMMENT ON COLUMN dlq.redrive_tasks.moved IS
    'messages replayed (re-applied, handled or handed to consumers), from dlq_reprocess''s summaries';
COMMENT ON COLUMN dlq.redrive_tasks.failed IS
    'replays that failed, from dlq_reprocess''s summaries';
COMMENT ON COLUMN dlq.redrive_tasks.skipped IS
    'candidates dlq_reprocess skipped (taken by a concurrent call meanwhile) or no longer found';
COMMENT ON COLUMN dlq.redrive_tasks.tokens IS
    'token bucket of the rate: rate_per_second tokens a second since last_tick_at, one per message';
COMMENT ON COLUMN dlq.redrive_tasks.window_done IS
    'synchronous replays since the failure ratio was last looked at (early stop, at least 10)';
COMMENT ON COLUMN dlq.redrive_tasks.pauses IS
    'early stops in a row: the backoff to resume_at grows with it (dlq.retry_delay of the queue)';
SELECT pg_catalog.pg_extension_config_dump('dlq.redrive_tasks', '');
SELECT pg_catalog.pg_extension_config_dump('dlq.redrive_tasks_task_id_seq', '');
REVOKE ALL ON dlq.redrive_tasks FROM PUBLIC;
GRANT SELECT ON dlq.redrive_tasks TO dlq_reader;

/* What dlq_redrive_status and etl_status_json show of a task. */
CREATE FUNCTION dlq.redrive_task_json(t dlq.redrive_tasks)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'task_id', t.task_id, 'queue', t.queue, 'state', t.state,
        'rate_per_second', t.rate_per_second,
        'filters', jsonb_strip_nulls(jsonb_build_object(
            'component', t.component, 'sqlstate', t.sqlstate, 'error_class', t.error_class,
            'since', t.since, 'until', t.until)),
        'force', t.force, 'max_messages', t.max_messages,
        'reason', t.reason, 'ticket', t.ticket, 'created_by', t.created_by::text,
        'started_at', t.started_at, 'finished_at', t.finished_at, 'end_reason', t.end_reason,
        'total', t.total, 'taken', t.taken, 'moved', t.moved, 'failed', t.failed,
        'skipped', t.skipped,
        'paused_at', t.paused_at, 'paused_reason', t.paused_reason, 'resume_at', t.resume_at,
        'eta', CASE WHEN t.state IN ('running', 'paused')
                    THEN greatest(coalesce(t.resume_at, now()), now())
                         + make_interval(secs => greatest(t.total - t.taken, 0)::float8
                                                 / t.rate_per_second) END)
$$;
COMMENT ON FUNCTION dlq.redrive_task_json(dlq.redrive_tasks) IS
    'a redrive task as dlq_redrive_status shows it: state, counters, filters, pause, eta';

CREATE FUNCTION @extschema@.dlq_redrive_start(
    queue text,
    rate_per_second integer,
    component text DEFAULT NULL,
    sqlstate text DEFAULT NULL,
    error_class text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    force boolean DEFAULT false,
    max_messages bigint DEFAULT NULL,
    reason text DEFAULT NULL,
    ticket text DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_redrive_start';
COMMENT ON FUNCTION @extschema@.dlq_redrive_start(text, integer, text, text, text, timestamptz,
    timestamptz, boolean, bigint, text, text) IS
    'start a redrive task: the worker replays the queue''s pending messages (and review ones with force) that pass the filters, at rate_per_second, as the caller; returns the task id';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_redrive_start(text, integer, text, text, text,
    timestamptz, timestamptz, boolean, bigint, text, text) TO dlq_operator;

CREATE FUNCTION @extschema@.dlq_redrive_status(task_id bigint)
RETURNS jsonb
LANGUAGE c STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'dlq_redrive_status';
COMMENT ON FUNCTION @extschema@.dlq_redrive_status(bigint) IS
    'a redrive task: state, moved, failed, started_at, finished_at, eta, rate, queue, filters, pause';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_redrive_status(bigint) TO dlq_reader;

CREATE FUNCTION @extschema@.dlq_redrive_cancel(task_id bigint)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'dlq_redrive_cancel';
COMMENT ON FUNCTION @extschema@.dlq_redrive_cancel(bigint) IS
    'cancel a running or paused redrive task; true when this call cancelled it, false when it had already ended';
GRANT EXECUTE ON FUNCTION @extschema@.dlq_redrive_cancel(bigint) TO dlq_operator;

/*
 * Worker step: the running tasks, and the paused ones with when they resume
 * (due_at), so that the worker knows when to tick next.
 */
CREATE FUNCTION dlq.worker_redrive_due()
RETURNS TABLE (task_id bigint, due_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.task_id, CASE WHEN t.state = 'paused' THEN t.resume_at ELSE now() END
      FROM dlq.redrive_tasks t
     WHERE t.state IN ('running', 'paused')
     ORDER BY t.task_id
$$;
COMMENT ON FUNCTION dlq.worker_redrive_due() IS
    'worker step: the running and paused redrive tasks, with the time each is due';

/* A task ends (finished, cancelled, failed), audited. */
CREATE FUNCTION dlq.redrive_end(task_id bigint, new_state text, why text, actor text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t dlq.redrive_tasks;
BEGIN
    UPDATE dlq.redrive_tasks r
       SET state = new_state, finished_at = now(), end_reason = why,
           paused_at = NULL, paused_reason = NULL, resume_at = NULL
     WHERE r.task_id = redrive_end.task_id
    RETURNING r.* INTO t;
    INSERT INTO dlq.events (actor, kind, queue, message_count, detail)
    VALUES (actor, ('redrive_' || new_state)::dlq.event_kind, t.queue, t.moved,
            jsonb_strip_nulls(jsonb_build_object(
                'task_id', t.task_id, 'moved', t.moved, 'failed', t.failed,
                'skipped', t.skipped, 'taken', t.taken, 'reason', why)));
END
$$;
COMMENT ON FUNCTION dlq.redrive_end(bigint, text, text, text) IS
    'end a redrive task as finished, cancelled or failed, with its reason and an event';

/*
 * A task pauses until resume_at: after an early stop or a replay that failed
 * as a whole (a paused queue, no live consumer, an error).  The wait is the
 * queue's backoff (dlq.retry_delay without jitter) for the pauses in a row.
 */
CREATE FUNCTION dlq.redrive_pause(task_id bigint, why text, actor text,
                                  detail jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t dlq.redrive_tasks;
    q dlq.queues;
BEGIN
    SELECT * INTO t FROM dlq.redrive_tasks r WHERE r.task_id = redrive_pause.task_id;
    SELECT * INTO q FROM dlq.queues s WHERE s.queue = t.queue;
    UPDATE dlq.redrive_tasks r
       SET state = 'paused', pauses = r.pauses + 1, paused_at = now(), paused_reason = why,
           resume_at = now() + dlq.retry_delay(q, r.pauses + 1, 0.5),
           window_done = 0, window_failed = 0
     WHERE r.task_id = redrive_pause.task_id
    RETURNING r.* INTO t;
    INSERT INTO dlq.events (actor, kind, queue, detail)
    VALUES (actor, 'redrive_paused', t.queue,
            jsonb_build_object('task_id', t.task_id, 'reason', why,
                               'resume_at', t.resume_at, 'pauses', t.pauses)
            || coalesce(detail, '{}'));
END
$$;
COMMENT ON FUNCTION dlq.redrive_pause(bigint, text, text, jsonb) IS
    'pause a redrive task until the queue''s backoff for its pauses in a row has passed, with its reason and an event';

/*
 * Worker step, first half of a tick (the worker then replays the ids as
 * created_by and calls dlq.worker_redrive_done, all in one transaction):
 * locks the task (a task locked by dlq_redrive_cancel is left to the next
 * tick), resumes it when paused and due, ends it when its queue is gone or
 * nothing is left, and otherwise takes the next candidates after its cursor,
 * as many as the token bucket holds (rate_per_second tokens a second since
 * the last tick, at most one second's worth and batch_size).  No row when
 * there is nothing to replay in this tick.
 */
CREATE FUNCTION dlq.worker_redrive_take(task_id bigint, batch_size integer,
                                        actor text DEFAULT current_user)
RETURNS TABLE (queue text, created_by oid, replay_target regclass, force boolean,
               reason text, ticket text, message_ids bigint[], replay_handler regprocedure)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t dlq.redrive_tasks;
    target regclass;
    handler regprocedure;
    budget double precision;
    n bigint;
    picked bigint[];
BEGIN
    /* A look without a lock first: most ticks of a slow task take nothing. */
    SELECT * INTO t FROM dlq.redrive_tasks r WHERE r.task_id = worker_redrive_take.task_id;
    IF NOT FOUND OR (t.state = 'paused' AND t.resume_at > now())
       OR (t.state = 'running'
           AND t.tokens + t.rate_per_second
                          * greatest(extract(epoch FROM now() - t.last_tick_at)::float8, 0) < 1) THEN
        RETURN;
    END IF;
    SELECT * INTO t FROM dlq.redrive_tasks r
     WHERE r.task_id = worker_redrive_take.task_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR t.state NOT IN ('running', 'paused') THEN
        RETURN;
    END IF;
    IF t.state = 'paused' THEN
        IF t.resume_at > now() THEN
            RETURN;
        END IF;
        UPDATE dlq.redrive_tasks r
           SET state = 'running', paused_at = NULL, paused_reason = NULL, resume_at = NULL,
               tokens = 0, last_tick_at = now()
         WHERE r.task_id = t.task_id;
        INSERT INTO dlq.events (actor, kind, queue, detail)
        VALUES (actor, 'redrive_resumed', t.queue,
                jsonb_build_object('task_id', t.task_id, 'paused_reason', t.paused_reason));
        RETURN;
    END IF;
    SELECT s.replay_target, s.replay_handler INTO target, handler
      FROM dlq.queues s WHERE s.queue = t.queue;
    IF NOT FOUND THEN
        PERFORM dlq.redrive_end(t.task_id, 'failed',
                                format('queue "%s" no longer exists', t.queue), actor);
        RETURN;
    END IF;

    budget := least(t.tokens + t.rate_per_second
                               * greatest(extract(epoch FROM now() - t.last_tick_at)::float8, 0),
                    greatest(t.rate_per_second, 1)::float8);
    n := least(floor(budget)::bigint, greatest(batch_size, 1),
               coalesce(t.max_messages - t.taken, batch_size));
    IF n < 1 THEN
        RETURN;
    END IF;
    picked := ARRAY(
        SELECT m.message_id FROM dlq.messages m
         WHERE m.slot = 0 AND m.queue = t.queue
           AND (m.status = 'pending' OR (t.force AND m.status = 'review'))
           AND m.message_id > t.cursor AND m.message_id <= t.last_id
           AND (t.component IS NULL OR m.component = t.component)
           AND (t.sqlstate IS NULL OR m.sqlstate = t.sqlstate::bpchar)
           AND (t.error_class IS NULL OR m.error_class = t.error_class)
           AND (t.since IS NULL OR m.stored_at >= t.since)
           AND (t.until IS NULL OR m.stored_at < t.until)
         ORDER BY m.message_id
         LIMIT n);
    IF cardinality(picked) = 0 THEN
        PERFORM dlq.redrive_end(t.task_id, 'finished', 'no message left', actor);
        RETURN;
    END IF;
    UPDATE dlq.redrive_tasks r
       SET tokens = budget - cardinality(picked), last_tick_at = now()
     WHERE r.task_id = t.task_id;
    RETURN QUERY SELECT t.queue, t.created_by::oid, target, t.force, t.reason, t.ticket, picked,
                        handler;
END
$$;
COMMENT ON FUNCTION dlq.worker_redrive_take(bigint, integer, text) IS
    'worker step: the next candidates of a redrive task that its rate allows now (resuming or ending it when due)';

/*
 * Worker step, second half of a tick: the replay of message_ids returned
 * summary; the task's cursor and counters move in the same transaction.
 * Early stop: once at least 10 synchronous replays (re-applied or handled
 * now, not handed to consumers) were counted since the last look, the task
 * pauses when more than the queue's retry_stop_ratio of them failed.
 */
CREATE FUNCTION dlq.worker_redrive_done(task_id bigint, message_ids bigint[], summary jsonb,
                                        actor text DEFAULT current_user)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t dlq.redrive_tasks;
    ratio double precision;
    n_replayed bigint := coalesce((summary ->> 'replayed')::bigint, 0);
    n_failed bigint := coalesce((summary ->> 'failed')::bigint, 0);
    sync bigint;
BEGIN
    sync := n_replayed - coalesce((summary ->> 'notified')::bigint, 0) + n_failed;
    UPDATE dlq.redrive_tasks r
       SET cursor = greatest(r.cursor, (SELECT max(i) FROM unnest(message_ids) i)),
           taken = r.taken + cardinality(message_ids),
           moved = r.moved + n_replayed,
           failed = r.failed + n_failed,
           skipped = r.skipped + coalesce((summary ->> 'skipped')::bigint, 0)
                               + coalesce((summary ->> 'not_found')::bigint, 0),
           window_done = r.window_done + sync,
           window_failed = r.window_failed + n_failed
     WHERE r.task_id = worker_redrive_done.task_id
    RETURNING r.* INTO t;

    IF t.window_done >= 10 THEN
        SELECT q.retry_stop_ratio INTO ratio FROM dlq.queues q WHERE q.queue = t.queue;
        IF ratio IS NOT NULL AND t.window_failed::float8 / t.window_done > ratio THEN
            PERFORM dlq.redrive_pause(t.task_id,
                format('%s of the last %s replays failed, above the queue''s retry_stop_ratio %s',
                       t.window_failed, t.window_done, ratio),
                actor,
                jsonb_build_object('failed', t.window_failed, 'replays', t.window_done,
                                   'retry_stop_ratio', ratio));
            RETURN;
        END IF;
        UPDATE dlq.redrive_tasks r SET window_done = 0, window_failed = 0, pauses = 0
         WHERE r.task_id = t.task_id;
    END IF;
    IF t.taken >= t.max_messages THEN
        PERFORM dlq.redrive_end(t.task_id, 'finished', 'max_messages reached', actor);
    END IF;
END
$$;
COMMENT ON FUNCTION dlq.worker_redrive_done(bigint, bigint[], jsonb, text) IS
    'worker step: count a redrive tick''s replay summary on its task, move its cursor, pause it early when too many failed, finish it at max_messages';

/*
 * Early stop of automatic retries: the queue's retries stop until
 * retry_resume_at when the failure ratio of its synchronous retries passes
 * retry_stop_ratio (looked at once at least 10 were counted).
 */
ALTER TABLE dlq.queues
    ADD COLUMN retry_stopped_at timestamptz,
    ADD COLUMN retry_resume_at timestamptz,
    ADD COLUMN retry_stop_reason text,
    ADD COLUMN retry_stops integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_window_done integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_window_failed integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN dlq.queues.retry_stopped_at IS
    'when automatic retries stopped early (failure ratio above retry_stop_ratio); NULL: not stopped';
COMMENT ON COLUMN dlq.queues.retry_resume_at IS
    'when stopped automatic retries resume by themselves';
COMMENT ON COLUMN dlq.queues.retry_stop_reason IS
    'why automatic retries stopped early';
COMMENT ON COLUMN dlq.queues.retry_stops IS
    'early stops of automatic retries in a row: the wait to retry_resume_at grows with it';
COMMENT ON COLUMN dlq.queues.retry_window_done IS
    'synchronous automatic retries since the failure ratio was last looked at (at least 10)';
COMMENT ON COLUMN dlq.queues.retry_window_failed IS
    'of those, how many failed';

/*
 * Worker step after a queue's automatic retries: count the summary of their
 * dlq_reprocess, and stop the queue's retries when too many failed.
 */
CREATE FUNCTION dlq.worker_retry_outcome(queue text, summary jsonb,
                                         actor text DEFAULT current_user)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    q dlq.queues;
    n_failed bigint := coalesce((summary ->> 'failed')::bigint, 0);
    sync bigint;
    why text;
BEGIN
    sync := coalesce((summary ->> 'replayed')::bigint, 0)
            - coalesce((summary ->> 'notified')::bigint, 0) + n_failed;
    IF sync <= 0 THEN
        RETURN false;
    END IF;
    UPDATE dlq.queues s
       SET retry_window_done = s.retry_window_done + sync,
           retry_window_failed = s.retry_window_failed + n_failed
     WHERE s.queue = worker_retry_outcome.queue
    RETURNING s.* INTO q;
    IF NOT FOUND OR q.retry_window_done < 10 THEN
        RETURN false;
    END IF;
    IF q.retry_stop_ratio IS NULL
       OR q.retry_window_failed::float8 / q.retry_window_done <= q.retry_stop_ratio THEN
        UPDATE dlq.queues s SET retry_window_done = 0, retry_window_failed = 0, retry_stops = 0
         WHERE s.queue = q.queue;
        RETURN false;
    END IF;
    why := format('%s of the last %s automatic retries failed, above the queue''s retry_stop_ratio %s',
                  q.retry_window_failed, q.retry_window_done, q.retry_stop_ratio);
    UPDATE dlq.queues s
       SET retry_stopped_at = now(), retry_stop_reason = why, retry_stops = s.retry_stops + 1,
           retry_resume_at = now() + dlq.retry_delay(q, q.retry_stops + 1, 0.5),
           retry_window_done = 0, retry_window_failed = 0
     WHERE s.queue = q.queue
    RETURNING s.* INTO q;
    INSERT INTO dlq.events (actor, kind, queue, detail)
    VALUES (actor, 'retry_stopped', q.queue,
            jsonb_build_object('reason', why, 'resume_at', q.retry_resume_at,
                               'stops', q.retry_stops, 'retry_stop_ratio', q.retry_stop_ratio));
    RETURN true;
END
$$;
COMMENT ON FUNCTION dlq.worker_retry_outcome(text, jsonb, text) IS
    'worker step: count the outcome of a queue''s automatic retries and stop them early when the failure ratio passes retry_stop_ratio';

/* Worker step: stopped automatic retries whose resume time has come resume, audited. */
CREATE FUNCTION dlq.worker_retry_resume(actor text DEFAULT current_user)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    WITH due AS (
        SELECT s.queue, s.retry_stop_reason FROM dlq.queues s
         WHERE s.retry_resume_at <= now()
           FOR UPDATE SKIP LOCKED
    ), back AS (
        UPDATE dlq.queues s
           SET retry_stopped_at = NULL, retry_resume_at = NULL, retry_stop_reason = NULL
          FROM due
         WHERE s.queue = due.queue
        RETURNING s.queue, due.retry_stop_reason AS why
    ), audit AS (
        INSERT INTO dlq.events (actor, kind, queue, detail)
        SELECT actor, 'retry_resumed', back.queue, jsonb_build_object('stop_reason', back.why)
          FROM back
    )
    SELECT count(*) INTO n FROM back;
    RETURN n;
END
$$;
COMMENT ON FUNCTION dlq.worker_retry_resume(text) IS
    'worker step: automatic retries stopped early resume once retry_resume_at has come';

/*
 * dlq.worker_retry_due as in "retry by error class" above, but a queue whose
 * automatic retries stopped early is left out until retry_resume_at.
 */
CREATE OR REPLACE FUNCTION dlq.worker_retry_due(batch_size integer)
RETURNS TABLE (queue text, message_ids bigint[])
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    retry bigint[];
    waiting bigint[];
BEGIN
    SELECT coalesce(array_agg(d.message_id) FILTER (WHERE d.retry), '{}'),
           coalesce(array_agg(d.message_id) FILTER (WHERE NOT d.retry), '{}')
      INTO retry, waiting
      FROM (SELECT m.message_id,
                   q.retry_on = 'all'
                   OR dlq.sqlstate_class(m.sqlstate, q.transient_sqlstates, q.permanent_sqlstates)
                      = 'transient' AS retry
              FROM dlq.messages m JOIN dlq.queues q ON q.queue = m.queue
             WHERE m.slot = 0 AND m.status = 'pending' AND m.next_retry_at <= now()
               AND q.auto_retry AND NOT q.paused
               AND (q.retry_resume_at IS NULL OR q.retry_resume_at <= now())
             ORDER BY m.next_retry_at
             LIMIT batch_size) d;
    /* Written only when there is something to write (a round takes no row lock otherwise). */
    IF cardinality(waiting) > 0 THEN
        UPDATE dlq.messages m SET next_retry_at = NULL
         WHERE m.slot = 0 AND m.message_id = ANY (ARRAY(
                   SELECT s.message_id FROM dlq.messages s
                    WHERE s.slot = 0 AND s.message_id = ANY (waiting)
                      AND s.status = 'pending' AND s.next_retry_at <= now()
                      FOR UPDATE SKIP LOCKED));
    END IF;
    RETURN QUERY
        SELECT m.queue, array_agg(m.message_id ORDER BY m.message_id)
          FROM dlq.messages m
         WHERE m.slot = 0 AND m.message_id = ANY (retry)
         GROUP BY m.queue
         ORDER BY m.queue;
END
$$;
COMMENT ON FUNCTION dlq.worker_retry_due(integer) IS
    'worker step: pending messages of auto_retry queues due for a retry that retry_on allows, at most batch_size looked at, grouped by queue, leaving out queues whose retries stopped early; the due ones it does not allow lose next_retry_at';

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
