#!/usr/bin/env bash
# 10M messages (issue 12, DESIGN.md section 7.4): a dlq_list page, etl_status
# and dlq_store at 10M pending messages vs at 1M.  OFF by default: it runs
# only with BENCH_BIG=1 (make bench BENCH_BIG=1 BENCH_ONLY=82_storage), and
# stores 10M messages through dlq_store, which takes 10-15 minutes and about
# 10 GB of disk on 1.0 (2 cores; see tests/bench/README.md).  BENCH_BIG_BASE
# (default 1000000) and BENCH_BIG_ROWS (default 10000000) change the two
# sizes.  Messages are spread over 20 queues (bench_big_1 .. bench_big_20);
# at each size, after VACUUM ANALYZE:
#   first page   dlq_list('bench_big_1'), pending, 100 rows
#   last page    the same with the cursor 100 messages before the queue's end
#   etl_status   etl_status() over every queue
#   store        dlq_store into bench_big_1, pgbench 4 clients
# Page and etl_status figures: median of 5 pgbench runs of 200 calls.
# Goal: each within 1.2x of its 1M figure.  TRUNCATEs dlq.messages first.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"
. "$here/storage_lib.sh"

if [ "${BENCH_BIG:-0}" != 1 ]; then
    echo "skipped: set BENCH_BIG=1 for the 10M-message run (10-15 minutes, ~10 GB)"
    exit 0
fi
base=${BENCH_BIG_BASE:-1000000}
big=${BENCH_BIG_ROWS:-10000000}
secs=$(bench_seconds "${BENCH_BIG_STORE_SECONDS:-10}")
queues=20

bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
for i in $(seq 1 $queues); do
    bench_psql -c "SELECT (dlq_configure('bench_big_$i', retention => '365 days')).queue" >/dev/null
done

# load FROM TO: messages FROM..TO through dlq_store, round-robin over the
# queues, a commit per 10000.
load() {
    bench_psql <<SQL
DO \$\$
DECLARE
    done_ bigint := $1 - 1;
BEGIN
    WHILE done_ < $2 LOOP
        PERFORM dlq_store('bench_big_' || (g % $queues + 1), $(storage_payload g), $STORAGE_ERROR,
                          $STORAGE_COMPONENT, $STORAGE_SQLSTATE, $STORAGE_DETAIL)
           FROM generate_series(done_ + 1, least(done_ + 10000, $2)) g;
        done_ := least(done_ + 10000, $2);
        COMMIT;
    END LOOP;
END \$\$;
SQL
}

latency() {
    local script=$1 v=() i
    for i in 1 2 3 4 5; do
        v+=("$(bench_pgbench "$BENCH_DIR/storage_big.log" -M prepared -c 1 -t 200 -f "$script" &&
               sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' "$BENCH_DIR/storage_big.log")")
    done
    bench_median "${v[@]}"
}
first_sql=$(bench_script storage_big_first <<'EOF'
SELECT * FROM dlq_list('bench_big_1', batch_size => 100);
EOF
)
status_sql=$(bench_script storage_big_status <<'EOF'
SELECT * FROM etl_status();
EOF
)
store_sql=$(bench_script storage_big_store <<EOF
\set id random(1, 1000000000)
SELECT dlq_store('bench_big_1', $(storage_payload ":id::bigint"), $STORAGE_ERROR, $STORAGE_COMPONENT, $STORAGE_SQLSTATE);
EOF
)

# measure SIZE: prints "first-page last-page etl_status store-tps bytes".
measure() {
    bench_psql -c "VACUUM ANALYZE dlq.messages" >/dev/null
    local cursor n
    cursor=$(bench_psql -c "SELECT message_id FROM dlq.message WHERE queue = 'bench_big_1' AND status = 'pending'
                             ORDER BY message_id DESC OFFSET 100 LIMIT 1")
    n=$(bench_psql -c "SELECT count(*) FROM dlq_list('bench_big_1', $cursor, 100)")
    [ "$n" = 100 ] || { echo "the last page holds $n messages" >&2; return 1; }
    local last_sql
    last_sql=$(bench_script storage_big_last <<EOF
SELECT * FROM dlq_list('bench_big_1', $cursor, 100);
EOF
)
    echo "$(latency "$first_sql") $(latency "$last_sql") $(latency "$status_sql") $(bench_tps "$store_sql" "$secs" 4) $(storage_rel_size dlq.messages)"
}

t=$(bench_now_ms)
load 1 "$base"
load_base_s=$(( $(bench_elapsed_ms "$t") / 1000 ))
read -r f1 l1 s1 t1 b1 <<<"$(measure)"
echo "at $base: first page $f1 ms, last page $l1 ms, etl_status $s1 ms, dlq_store $(storage_int "$t1") tps, $(storage_mb "$b1") (loaded in $load_base_s s)"
t=$(bench_now_ms)
load $((base + 1)) "$big"
load_big_s=$(( $(bench_elapsed_ms "$t") / 1000 ))
read -r f2 l2 s2 t2 b2 <<<"$(measure)"
echo "at $big: first page $f2 ms, last page $l2 ms, etl_status $s2 ms, dlq_store $(storage_int "$t2") tps, $(storage_mb "$b2") (loaded in $load_big_s s more)"
echo "ratios: first page $(bench_ratio "$f2" "$f1"), last page $(bench_ratio "$l2" "$l1"), etl_status $(bench_ratio "$s2" "$s1"), dlq_store $(bench_ratio "$t2" "$t1")"
bench_report "## $big vs $base messages (bench_82_storage_10m.sh, issue 12)" "" \
    "Pending messages stored by \`dlq_store\` round-robin over $queues queues ($load_base_s s for the first $base," \
    "$load_big_s s for the rest), then VACUUM ANALYZE. Pages: \`dlq_list('bench_big_1')\`, first and the one 100" \
    "messages before the end; page and \`etl_status()\` latencies are medians of 5 pgbench runs of 200 calls;" \
    "\`dlq_store\`: pgbench 4 clients, $secs s. Goal: within 1.2x of the $base figures (dlq_store: >= 1/1.2)." "" \
    "| figure | at $base | at $big | ratio |" "|---|---:|---:|---:|" \
    "| first page ms | $f1 | $f2 | $(bench_ratio "$f2" "$f1") |" \
    "| last page ms | $l1 | $l2 | $(bench_ratio "$l2" "$l1") |" \
    "| etl_status() ms | $s1 | $s2 | $(bench_ratio "$s2" "$s1") |" \
    "| dlq_store tps | $(storage_int "$t1") | $(storage_int "$t2") | $(bench_ratio "$t2" "$t1") |" \
    "| dlq.messages | $(storage_mb "$b1") | $(storage_mb "$b2") | $(bench_ratio "$b2" "$b1") |" ""
bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
