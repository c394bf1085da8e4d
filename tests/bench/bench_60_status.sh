#!/usr/bin/env bash
# etl_status at scale: latency with 1M pending messages across 20 queues
# (x BENCH_SCALE), and dlq_store throughput (pgbench, 4 clients) without the
# counting triggers, with them, and with them while etl_status is polled every
# 100 ms.  Run by tests/bench/run.sh, which exports PGHOST, PGPORT,
# PGDATABASE, PG_BIN, BENCH_SCALE and BENCH_REPORT.
set -euo pipefail

: "${PG_BIN:=$(pg_config --bindir)}"
: "${BENCH_SCALE:=1}"
: "${BENCH_REPORT:=/dev/null}"
DURATION=${BENCH_STATUS_SECONDS:-10}
QUEUES=20
TOTAL=$(awk -v s="$BENCH_SCALE" 'BEGIN { n = int(1000000 * s); print (n < 1000 ? 1000 : n) }')
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
work=$(mktemp -d /tmp/bench_status.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

calc() { awk "BEGIN { printf \"%.${2:-1}f\", $1 }"; }
tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1; }
latency() { sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' | head -1; }

echo "== bench_60_status: $TOTAL pending messages across $QUEUES queues"
"${PSQL[@]}" <<SQL
DELETE FROM dlq.messages WHERE queue LIKE 'bench\_status\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'bench\_status\_%';
INSERT INTO dlq.queues (queue, channel)
SELECT 'bench_status_' || i, 'dlq_bench_status_' || i FROM generate_series(1, $QUEUES) i;
SQL
load_start=$(date +%s.%N)
"${PSQL[@]}" -c "INSERT INTO dlq.messages (queue, payload, error, sqlstate, error_class, max_attempts, expires_at)
    SELECT 'bench_status_' || (i % $QUEUES + 1), jsonb_build_object('order', i, 'sku', 'abc'),
           'duplicate key value violates unique constraint', '23505', 'permanent', 5, now() + interval '30 days'
      FROM generate_series(1, $TOTAL) i"
load_s=$(calc "$(date +%s.%N) - $load_start")
# A small queue whose messages all come after the million: its oldest
# pending message must be found through its own index range.
"${PSQL[@]}" -c "SELECT count(dlq_store('bench_status_late', '{}', 'late failure')) FROM generate_series(1, 10)" > /dev/null
"${PSQL[@]}" -c "VACUUM ANALYZE dlq.messages" -c "VACUUM ANALYZE dlq.counts"

pending=$("${PSQL[@]}" -tAc "SELECT sum(pending) FROM etl_status() WHERE name LIKE 'bench\_status\_%'")
echo "pending counted by etl_status: $pending (loaded in ${load_s}s)"

echo 'SELECT * FROM etl_status();' > "$work/status.sql"
echo 'SELECT etl_status_json();' > "$work/json.sql"
echo 'SELECT * FROM dlq.metrics;' > "$work/metrics.sql"
echo "SELECT * FROM etl_status('bench_status_late');" > "$work/one.sql"
cat > "$work/naive.sql" <<'SQL'
SELECT queue, status, count(*) FROM dlq.messages GROUP BY queue, status;
SQL
cat > "$work/store.sql" <<SQL
\set q random(1, $QUEUES)
SELECT dlq_store('bench_status_' || :q, '{"order": 42, "sku": "abc"}', 'duplicate key value violates unique constraint', component => 'loader', sqlstate => '23505');
SQL

run_latency() { "$PG_BIN/pgbench" -n -c 1 -T "$2" -f "$work/$1" 2>&1 | latency; }
lat_status=$(run_latency status.sql "$DURATION")
lat_one=$(run_latency one.sql "$DURATION")
lat_json=$(run_latency json.sql "$DURATION")
lat_metrics=$(run_latency metrics.sql "$DURATION")
lat_naive=$("$PG_BIN/pgbench" -n -c 1 -t 3 -f "$work/naive.sql" 2>&1 | latency)
echo "etl_status(): ${lat_status} ms   etl_status(queue): ${lat_one} ms   etl_status_json(): ${lat_json} ms   dlq.metrics: ${lat_metrics} ms"
echo "for comparison, counting the messages (GROUP BY count(*)): ${lat_naive} ms"

# dlq_store throughput, modes interleaved over two rounds to spread noise.
store() { "$PG_BIN/pgbench" -n -c 4 -j 4 -T "$DURATION" -f "$work/store.sql" 2>&1 | tps; }
set_triggers() {
    "${PSQL[@]}" -c "ALTER TABLE dlq.messages $1 TRIGGER messages_count_insert" \
                 -c "ALTER TABLE dlq.messages $1 TRIGGER messages_count_update"
}
declare -A sum=([bare]=0 [counted]=0 [polled]=0)
for round in 1 2; do
    set_triggers DISABLE
    t=$(store); sum[bare]=$(calc "${sum[bare]} + $t"); echo "round $round without counting triggers: $t tps"
    set_triggers ENABLE
    t=$(store); sum[counted]=$(calc "${sum[counted]} + $t"); echo "round $round with counting triggers: $t tps"
    "$PG_BIN/pgbench" -n -c 1 -R 10 -T "$((DURATION + 2))" -f "$work/status.sql" > "$work/poll.log" 2>&1 &
    poller=$!
    sleep 1
    t=$(store); sum[polled]=$(calc "${sum[polled]} + $t"); echo "round $round with counting triggers and etl_status every 100 ms: $t tps"
    wait "$poller"
    poll_lat=$(latency < "$work/poll.log")
    echo "  etl_status latency while stores run: ${poll_lat} ms"
done
set_triggers ENABLE
"${PSQL[@]}" -tAc "SELECT dlq.recount()" > /dev/null

bare=$(calc "${sum[bare]} / 2")
counted=$(calc "${sum[counted]} / 2")
polled=$(calc "${sum[polled]} / 2")
r_counted=$(calc "$counted / $bare" 3)
r_polled=$(calc "$polled / $bare" 3)
echo "dlq_store: $bare tps without counting, $counted with (x$r_counted), $polled with polling (x$r_polled)"

"${PSQL[@]}" -c "DELETE FROM dlq.messages WHERE queue LIKE 'bench\_status\_%'" \
             -c "DELETE FROM dlq.queues WHERE queue LIKE 'bench\_status\_%'"

cat >> "$BENCH_REPORT" <<MD

## etl_status (bench_60_status.sh)

$TOTAL pending messages across $QUEUES queues (BENCH_SCALE=$BENCH_SCALE), pgbench, ${DURATION} s per figure.

| figure | value |
|---|---|
| \`etl_status()\` latency (goal ≤ 5 ms) | ${lat_status} ms |
| \`etl_status('a 10-message queue behind the million')\` latency | ${lat_one} ms |
| \`etl_status_json()\` latency | ${lat_json} ms |
| \`SELECT * FROM dlq.metrics\` latency | ${lat_metrics} ms |
| baseline: \`count(*) GROUP BY queue, status\` over the messages | ${lat_naive} ms |
| \`dlq_store\` without the counting triggers (4 clients) | ${bare} tps |
| \`dlq_store\` with the counting triggers | ${counted} tps (×${r_counted}) |
| \`dlq_store\` with the triggers, \`etl_status()\` polled every 100 ms | ${polled} tps (×${r_polled}) |
| \`etl_status()\` latency while stores run | ${poll_lat} ms |
MD
