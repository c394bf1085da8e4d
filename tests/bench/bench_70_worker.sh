#!/usr/bin/env bash
# The background worker at scale: 1M pending messages (x BENCH_SCALE) past
# expires_at, in a queue whose resolved_retention is 0, so one round first
# expires them all and then purges (deletes) them all, in dlq.batch_size
# batches.  Measured:
#   - expiry and purge rates, messages/s, from the worker's own audit events
#     (first to last batch of each step, so the launcher's start-up does not
#     count);
#   - dlq_store throughput (pgbench, 4 clients) while the worker expires and
#     purges, as a ratio to the same run with the worker kept out of the
#     database (dlq.databases), measured just before;
#   - dlq.messages size before the purge, after it, and after VACUUM.
# Goals (DESIGN.md section 6): >= 100k messages/s deleted; dlq_store keeps
# >= 0.8x its throughput.
#
# Needs what tests/bench/run.sh exports (PGHOST, PGPORT, PGDATABASE, PG_BIN,
# BENCH_SCALE, BENCH_REPORT) and a superuser connection: it changes
# dlq.databases with ALTER SYSTEM and resets it at the end.
set -euo pipefail

: "${PG_BIN:?run tests/bench/run.sh, or export PG_BIN and friends yourself}"
: "${BENCH_SCALE:=1}"
: "${BENCH_REPORT:=/dev/null}"
work=$(mktemp -d)
trap 'rm -rf "$work"; psql_ -d postgres -c "ALTER SYSTEM RESET dlq.databases" -c "ALTER SYSTEM RESET dlq.worker_cost_limit" -c "ALTER SYSTEM RESET dlq.partition_interval" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true' EXIT

psql_() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"
}
scaled() {
    awk -v n="$1" -v s="$BENCH_SCALE" -v m="$2" 'BEGIN { v = int(n * s + 0.5); if (v < m) v = m; print v }'
}

n=$(scaled 1000000 1000)
secs=$(scaled "${BENCH_WORKER_SECONDS:-10}" 3)
batch=$(psql_ -c "SHOW dlq.batch_size")

# Wait (polling) until no dlq worker runs in this database.
worker_gone() {
    for _ in $(seq 1 600); do
        [ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dlq worker' AND datname = current_database()")" = 0 ] && return 0
        sleep 0.1
    done
    echo "the dlq worker did not leave the database" >&2
    return 1
}

echo "worker bench: $n messages, dlq.batch_size $batch, dlq_store runs of $secs s"

# 1. Keep the worker out while the messages are loaded and the baseline runs.
# Its throttle is off here: this measures its raw pace (bench_80_storage has
# the throttled one).
psql_ -d postgres -c "ALTER SYSTEM SET dlq.databases = 'bench_no_such_database'" \
    -c "ALTER SYSTEM SET dlq.worker_cost_limit = 0" -c "SELECT pg_reload_conf()" >/dev/null
worker_gone

psql_ <<SQL
SET client_min_messages = warning;
SELECT count(dlq_store(q, '{}', 'create the queue')) AS queues FROM unnest(ARRAY['bench_worker', 'bench_worker_store']) q \\gset
DELETE FROM dlq.messages WHERE queue IN ('bench_worker', 'bench_worker_store');
DELETE FROM dlq.events WHERE queue IN ('bench_worker', 'bench_worker_store');
UPDATE dlq.queues SET resolved_retention = '0' WHERE queue = 'bench_worker';
INSERT INTO dlq.messages (queue, component, payload, error, sqlstate, error_class, max_attempts,
                          stored_at, last_failed_at, expires_at)
SELECT 'bench_worker', 'loader',
       jsonb_build_object('order_id', i, 'sku', 'A-1042', 'qty', 3, 'note', 'backordered'),
       'duplicate key value violates unique constraint "orders_pkey"', '23505', 'permanent', 5,
       now() - interval '31 days', now() - interval '31 days', now() - interval '1 day'
  FROM generate_series(1, $n) i;
VACUUM ANALYZE dlq.messages;
SQL
size_before=$(psql_ -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('dlq.messages')")

cat >"$work/store.sql" <<'SQL'
\set id random(1, 1000000000)
SELECT dlq_store('bench_worker_store', jsonb_build_object('order_id', :id::bigint, 'sku', 'A-1042'), 'failed', 'loader', '23505');
SQL
tps() {
    "$PG_BIN/pgbench" -n -M prepared -c 4 -j 2 -T "$secs" -f "$work/store.sql" >"$work/pgbench.log" 2>&1 ||
        { tail -20 "$work/pgbench.log" >&2; return 1; }
    sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)$/\1/p' "$work/pgbench.log"
}

# 2. Baseline: dlq_store without the worker.
tps_without=$(tps)

# wait_events KIND COUNT: poll until the worker's KIND events on the queue
# sum to at least COUNT (1: it has started).
wait_events() {
    for _ in $(seq 1 12000); do
        [ "$(psql_ -c "SELECT coalesce(sum(message_count), 0) >= $2 FROM dlq.events WHERE queue = 'bench_worker' AND kind = '$1'")" = t ] && return 0
        sleep 0.05
    done
    echo "the worker did not get to $2 $1 messages" >&2
    return 1
}

# 3. Let the worker in: it expires the messages (resolved_retention is still
# the default 7 days, so nothing is purged yet); dlq_store meanwhile.
psql_ -d postgres -c "ALTER SYSTEM RESET dlq.databases" -c "SELECT pg_reload_conf()" >/dev/null
wait_events expired 1
tps_expiry=$(tps)
expired_during=$(psql_ -c "SELECT coalesce(sum(message_count), 0) FROM dlq.events WHERE queue = 'bench_worker' AND kind = 'expired'")
wait_events expired "$n"
size_after_expiry=$(psql_ -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('dlq.messages')")

# 4. Retention 0: the worker purges them all; dlq_store meanwhile.  Since
# 1.1 closed messages leave by emptying their slot of the ring: one-second
# slots, so that the slot holding them closes (and empties) at once.
psql_ -c "UPDATE dlq.queues SET resolved_retention = '0' WHERE queue = 'bench_worker'"
psql_ -d postgres -c "ALTER SYSTEM SET dlq.partition_interval = 1" -c "SELECT pg_reload_conf()" >/dev/null
wait_events purged 1
tps_purge=$(tps)
purged_during=$(psql_ -c "SELECT coalesce(sum(message_count), 0) FROM dlq.events WHERE queue = 'bench_worker' AND kind = 'purged'")
wait_events purged "$n"

# The worker's pace from its own audit events: from the end of its first
# batch to the end of its last.
rates=$(psql_ -F ' ' <<'SQL'
SELECT kind, sum(message_count) - (array_agg(message_count ORDER BY at))[1],
       extract(epoch FROM max(at) - min(at))
  FROM dlq.events WHERE queue = 'bench_worker' AND kind IN ('expired', 'purged')
 GROUP BY kind ORDER BY kind;
SQL
)
size_after=$(psql_ -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('dlq.messages')")
psql_ -c "VACUUM dlq.messages"
size_vacuum=$(psql_ -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('dlq.messages')")
left=$(psql_ -c "SELECT count(*) FROM dlq.messages WHERE queue = 'bench_worker'")

rate() {
    echo "$rates" | awk -v k="$1" '$1 == k { if ($3 > 0) printf "%.0f", $2 / $3; else print "n/a" }'
}
expire_rate=$(rate expired)
purge_rate=$(rate purged)
ratio_expiry=$(awk -v a="$tps_expiry" -v b="$tps_without" 'BEGIN { printf "%.2f", a / b }')
ratio_purge=$(awk -v a="$tps_purge" -v b="$tps_without" 'BEGIN { printf "%.2f", a / b }')
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1048576 }'; }

cat <<EOF
expiry:  $expire_rate messages/s
purge:   $purge_rate messages/s deleted ($left left)
dlq_store tps: $tps_without without the worker; $tps_expiry during expiry ($expired_during expired by its end), ratio $ratio_expiry; $tps_purge during the purge ($purged_during purged by its end), ratio $ratio_purge
dlq.messages with indexes: $(mb "$size_before") loaded, $(mb "$size_after_expiry") after expiry, $(mb "$size_after") after the purge, $(mb "$size_vacuum") after VACUUM
EOF

cat >>"$BENCH_REPORT" <<EOF
## Background worker: expiry and purge of $n messages

dlq.batch_size = $batch; 4 pgbench clients calling dlq_store for $secs s on each side; $(nproc) CPUs.
Rates come from the worker's audit events (first to last batch).

| measure | value | goal |
| --- | --- | --- |
| expiry (pending -> expired, audited) | $expire_rate messages/s | |
| purge (1.1: emptying a slot of the ring, one event per slot; n/a when one slot held them all: see bench_80_storage for its time) | $purge_rate messages/s | >= 100000 |
| dlq_store without the worker | $tps_without tps | |
| dlq_store during expiry | $tps_expiry tps, ratio $ratio_expiry | |
| dlq_store during the purge | $tps_purge tps, ratio $ratio_purge | >= 0.8 |
| dlq.messages + indexes: loaded / expired / purged / after VACUUM | $(mb "$size_before") / $(mb "$size_after_expiry") / $(mb "$size_after") / $(mb "$size_vacuum") | |

EOF
