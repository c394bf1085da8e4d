# shellcheck shell=bash
# Helpers shared by the storage benchmarks of issue 12
# (tests/bench/bench_8*_storage*.sh); sourced after lib.sh, not run.
#
# They only use dlq's API (dlq_store, dlq_configure, dlq_reprocess_all,
# dlq_claim, dlq_ack, etl_status, the dlq.message view) and catalog
# functions, so that they measure 1.0's unpartitioned dlq.messages and the
# partitioned layout of 1.1 alike.  A few parts need a superuser connection:
# ALTER SYSTEM for dlq.databases and dlq.partition_interval (both reset on
# exit by storage_cleanup) and TRUNCATE of dlq.messages and dlq.events.

# The ~100-byte payload (pg_column_size of the jsonb is 98; jsonb aligns its
# numbers, so 100 exactly is not to be had with this shape) of message
# number EXPR, and the rest of the row every side writes.
storage_payload() {
    echo "jsonb_build_object('order_id', $1, 'sku', 'A-1042', 'qty', 3, 'note', 'backordered:2')"
}
STORAGE_ERROR="'duplicate key value violates unique constraint \"orders_pkey\"'"
STORAGE_SQLSTATE="'23505'"
STORAGE_COMPONENT="'loader'"
STORAGE_DETAIL="jsonb_build_object('constraint', 'orders_pkey', 'table', 'orders')"

# storage_rel_size REL: bytes of REL with its indexes and TOAST, summed over
# its leaf partitions when it is partitioned (pg_partition_tree returns no
# row for a table that is not).
storage_rel_size() {
    bench_psql -c "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))
                                      FROM pg_partition_tree('$1'::regclass) WHERE isleaf),
                                   pg_total_relation_size('$1'::regclass))"
}

# storage_partitions REL: how many leaf relations REL has (1 when it is not
# partitioned).
storage_partitions() {
    bench_psql -c "SELECT greatest(count(*), 1) FROM pg_partition_tree('$1'::regclass) WHERE isleaf"
}

# storage_has_guc NAME / storage_has_function NAME: 1 if the server knows
# the setting / dlq has the function (schema-qualified name), else 0.
storage_has_guc() {
    bench_psql -c "SELECT count(*) FROM pg_settings WHERE name = '$1'"
}
storage_has_function() {
    bench_psql -c "SELECT (count(*) > 0)::int FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname || '.' || p.proname = '$1'"
}

# storage_minimal_table NAME: the minimal error table a user would write:
# bigint identity key, one (queue, status, id) index, the columns the stored
# row fills plus the three a consumer changes.
storage_minimal_table() {
    bench_psql <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS $1;
CREATE TABLE $1 (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               text NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    component           text,
    payload             jsonb NOT NULL,
    error               text NOT NULL,
    sqlstate            char(5),
    error_detail        jsonb,
    stored_at           timestamptz NOT NULL DEFAULT now(),
    claimed_by          text,
    claim_expires_at    timestamptz,
    resolved_at         timestamptz
);
CREATE INDEX ON $1 (queue, status, id);
SQL
}

# storage_store QUEUE N [CHUNK]: N messages into QUEUE by dlq_store, a commit
# per CHUNK (default 10000), payload numbered from 1.
storage_store() {
    local q=$1 n=$2 chunk=${3:-10000}
    bench_psql <<SQL
DO \$\$
DECLARE
    done_ bigint := 0;
BEGIN
    WHILE done_ < $n LOOP
        PERFORM dlq_store('$q', $(storage_payload g), $STORAGE_ERROR, $STORAGE_COMPONENT, $STORAGE_SQLSTATE, $STORAGE_DETAIL)
           FROM generate_series(done_ + 1, least(done_ + $chunk, $n)) g;
        done_ := least(done_ + $chunk, $n);
        COMMIT;
    END LOOP;
END \$\$;
SQL
}

# storage_minimal_store TABLE QUEUE N: the same N rows into the minimal table,
# a commit per 10000.
storage_minimal_store() {
    local t=$1 q=$2 n=$3
    bench_psql <<SQL
DO \$\$
DECLARE
    done_ bigint := 0;
BEGIN
    WHILE done_ < $n LOOP
        INSERT INTO $t (queue, component, payload, error, sqlstate, error_detail)
        SELECT '$q', $STORAGE_COMPONENT, $(storage_payload g), $STORAGE_ERROR, $STORAGE_SQLSTATE, $STORAGE_DETAIL
          FROM generate_series(done_ + 1, least(done_ + 10000, $n)) g;
        done_ := least(done_ + 10000, $n);
        COMMIT;
    END LOOP;
END \$\$;
SQL
}

# storage_reprocess_all QUEUE: dlq_reprocess_all of the queue (one call, one
# transaction); prints how many were handed back.
storage_reprocess_all() {
    bench_psql -c "SELECT dlq_reprocess_all('$1') ->> 'replayed'"
}

# storage_claim_ack QUEUE: one consumer dlq_claims 1000 at a time and
# dlq_acks them, a commit per batch, until nothing is left; prints how many
# were acked.
storage_claim_ack() {
    bench_psql <<SQL
DO \$\$
DECLARE
    ids bigint[];
    payloads jsonb[];
    n bigint := 0;
BEGIN
    LOOP
        SELECT array_agg(message_id), array_agg(payload) INTO ids, payloads
          FROM dlq_claim('$1', 1000, '10 min');
        EXIT WHEN ids IS NULL;
        n := n + dlq_ack(ids);
        COMMIT;
    END LOOP;
    PERFORM set_config('bench.acked', n::text, false);
END \$\$;
SELECT current_setting('bench.acked');
SQL
}

# storage_minimal_replaying TABLE QUEUE and storage_minimal_claim_resolve
# TABLE QUEUE: the same three state changes as plain UPDATEs of the minimal
# table: pending -> replaying in one statement; then claim 1000
# (claimed_by, claim_expires_at, SKIP LOCKED, returning the payloads) and
# resolve them, a commit per batch.
storage_minimal_replaying() {
    bench_psql -c "UPDATE $1 SET status = 'replaying' WHERE queue = '$2' AND status = 'pending'" >/dev/null
}
storage_minimal_claim_resolve() {
    bench_psql <<SQL
DO \$\$
DECLARE
    ids bigint[];
    payloads jsonb[];
BEGIN
    LOOP
        WITH c AS (
            SELECT id FROM $1
             WHERE queue = '$2' AND status = 'replaying'
               AND (claim_expires_at IS NULL OR claim_expires_at < now())
             ORDER BY id LIMIT 1000
               FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE $1 m SET claimed_by = 'bench', claim_expires_at = now() + interval '10 min'
              FROM c WHERE m.id = c.id
            RETURNING m.id, m.payload
        )
        SELECT array_agg(id), array_agg(payload) INTO ids, payloads FROM u;
        EXIT WHEN ids IS NULL;
        UPDATE $1 SET status = 'resolved', resolved_at = now(), claimed_by = NULL, claim_expires_at = NULL
         WHERE id = ANY (ids);
        COMMIT;
    END LOOP;
END \$\$;
SQL
}

# storage_minimal_bulk TABLE QUEUE: the three state changes as three
# whole-queue UPDATEs, no batches.
storage_minimal_bulk() {
    bench_psql -c "UPDATE $1 SET status = 'replaying' WHERE queue = '$2' AND status = 'pending'" \
        -c "UPDATE $1 SET claimed_by = 'bench', claim_expires_at = now() + interval '10 min' WHERE queue = '$2' AND status = 'replaying'" \
        -c "UPDATE $1 SET status = 'resolved', resolved_at = now(), claimed_by = NULL, claim_expires_at = NULL
             WHERE queue = '$2' AND status = 'replaying'" >/dev/null
}

# storage_count QUEUE STATUS: messages of QUEUE in STATUS per etl_status
# (kept counts, cheap to poll).
storage_count() {
    bench_psql -c "SELECT coalesce(sum($2), 0) FROM etl_status('$1')"
}

# Keeping the worker out of this database and letting it back in, by
# dlq.databases (as bench_70_worker.sh does).
storage_worker_count() {
    bench_psql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dlq worker' AND datname = current_database()"
}
storage_worker_out() {
    bench_psql -d postgres -c "ALTER SYSTEM SET dlq.databases = 'bench_no_such_database'" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 600); do
        [ "$(storage_worker_count)" = 0 ] && return 0
        sleep 0.1
    done
    echo "the dlq worker did not leave the database" >&2
    return 1
}
storage_worker_in() {
    bench_psql -d postgres -c "ALTER SYSTEM RESET dlq.databases" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 600); do
        [ "$(storage_worker_count)" != 0 ] && return 0
        sleep 0.1
    done
    echo "the dlq worker did not come back" >&2
    return 1
}

# storage_set_interval SECONDS: dlq.partition_interval, when the server has
# it (prints what it did).  storage_cleanup resets it.
storage_set_interval() {
    if [ "$(storage_has_guc dlq.partition_interval)" = 1 ]; then
        bench_psql -d postgres -c "ALTER SYSTEM SET dlq.partition_interval = $1" -c "SELECT pg_reload_conf()" >/dev/null
        echo "dlq.partition_interval = $1 s"
    else
        echo "no dlq.partition_interval (unpartitioned dlq.messages)"
    fi
}

storage_reset_interval() {
    if [ "$(storage_has_guc dlq.partition_interval)" = 1 ]; then
        bench_psql -d postgres -c "ALTER SYSTEM RESET dlq.partition_interval" -c "SELECT pg_reload_conf()" >/dev/null
    fi
}

storage_cleanup() {
    bench_psql -d postgres -c "ALTER SYSTEM RESET dlq.databases" >/dev/null 2>&1 || true
    if [ "$(storage_has_guc dlq.partition_interval 2>/dev/null)" = 1 ]; then
        bench_psql -d postgres -c "ALTER SYSTEM RESET dlq.partition_interval" >/dev/null 2>&1 || true
    fi
    bench_psql -d postgres -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
}

# storage_mb BYTES / storage_fmt NUMBER: human units.
storage_mb() {
    awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1048576 }'
}
storage_int() {
    printf '%.0f' "$1"
}

# storage_pgbench_progress LOG SCRIPT SECONDS: dlq_store-like load with 4
# clients and per-second progress lines with epoch timestamps (to LOG);
# prints the overall tps.
storage_pgbench_progress() {
    local log=$1 script=$2 secs=$3
    bench_pgbench "$log" -M prepared -c 4 -j 2 -T "$secs" -P 1 --progress-timestamp -f "$script" || return 1
    sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)$/\1/p' "$log"
}

# storage_busy_tps LOG FROM TO: mean tps of the progress seconds of LOG
# (pgbench -P 1 --progress-timestamp) that overlap [FROM, TO] (epoch
# seconds), and how many seconds that was: "tps seconds".
storage_busy_tps() {
    sed -nE 's/^progress: ([0-9.]+) s, ([0-9.]+) tps.*/\1 \2/p' "$1" |
        awk -v f="$2" -v t="$3" '$1 > f && $1 - 1 < t { s += $2; n++ }
            END { if (n) printf "%.1f %d\n", s / n, n; else print "n/a 0" }'
}

# storage_watch QUEUE COLUMNS OUT: in the background, every 0.2 s, append
# "epoch count" to OUT, count being the sum of the etl_status COLUMNS (e.g.
# "resolved + expired") of QUEUE; the caller kills it ($!).
storage_watch() {
    local q=$1 cols=$2 out=$3
    (
        while :; do
            echo "$(storage_epoch) $(bench_psql -c "SELECT coalesce(sum($cols), 0) FROM etl_status('$q')")"
            sleep 0.2
        done
    ) >>"$out" 2>/dev/null &
}

# storage_busy_window OUT TARGET: from a storage_watch log, the interval
# during which the count moved from its first value to TARGET: "FROM TO"
# (epoch seconds; FROM is the last sample still at the first value, TO the
# first sample at TARGET, or the last sample when it never got there).
storage_busy_window() {
    awk -v target="$2" 'NR == 1 { first = $2; from = $1 }
        $2 == first && !moved { from = $1; next }
        { moved = 1 }
        $2 == target && moved && !to { to = $1 }
        { last = $1 }
        END { if (!to) to = last; printf "%s %s\n", from, to }' "$1"
}

# storage_epoch: the wall clock in epoch seconds with milliseconds.
storage_epoch() {
    date +%s.%3N
}
