#!/usr/bin/env bash
# Steady state of dlq.messages (issue 12, DESIGN.md section 7.4): C cycles
# (BENCH_CYCLES, default 20) of store N -> dlq_reprocess_all -> dlq_claim /
# dlq_ack (a commit per 1000) -> purge by the worker (resolved_retention 0),
# back to back, autovacuum at its defaults.  N is BENCH_CYCLE_SIZE, default
# 25k x BENCH_SCALE, so that the default run stays near 3 minutes on 2
# cores; DESIGN.md's figure is BENCH_CYCLE_SIZE=100000 (about 20-35 s a
# cycle on 1.0, 2 cores: 7-12 minutes).  After each cycle: the size of dlq.messages (all
# partitions, indexes, TOAST) and of dlq.events; after each store: the
# first-page latency of dlq_list on the queue's pending messages (median of
# 5 pgbench runs of 200 calls).  Goal: size and first page at cycle 20
# within 1.2x of cycle 2.
# When the server has dlq.partition_interval, it is set to
# BENCH_PARTITION_INTERVAL seconds (default 1) with ALTER SYSTEM, so that
# closed partitions rotate and retire within a cycle; reset at the end.
# TRUNCATEs dlq.messages and dlq.events first: a throwaway cluster only.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"
. "$here/storage_lib.sh"
trap storage_cleanup EXIT

cycles=${BENCH_CYCLES:-20}
size=${BENCH_CYCLE_SIZE:-$(bench_scaled 25000 1000)}
q=bench_storage_steady
interval_note=$(storage_set_interval "${BENCH_PARTITION_INTERVAL:-1}")
echo "steady state: $cycles cycles of $size messages; $interval_note"
storage_worker_in
bench_psql -c "TRUNCATE dlq.messages, dlq.events" \
    -c "SELECT (dlq_configure('$q', max_attempts => 1000, resolved_retention => '0', require_listener => false)).queue" >/dev/null
page_sql=$(bench_script storage_first_page <<EOF
SELECT * FROM dlq_list('$q', batch_size => 100);
EOF
)
first_page() {
    local v=() i
    for i in 1 2 3 4 5; do
        v+=("$(bench_pgbench "$BENCH_DIR/storage_page.log" -M prepared -c 1 -t 200 -f "$page_sql" &&
               sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' "$BENCH_DIR/storage_page.log")")
    done
    bench_median "${v[@]}"
}
secs_since() { awk -v s="$1" -v e="$(bench_now_ms)" 'BEGIN { printf "%.1f", (e - s) / 1000 }'; }

out="$BENCH_DIR/storage_steady.txt"
: >"$out"
printf '%5s %12s %12s %6s %10s %8s %10s %8s\n' cycle messages events parts "page ms" "store s" "handback s" "purge s"
for ((c = 1; c <= cycles; c++)); do
    t=$(bench_now_ms)
    storage_store "$q" "$size" 2000 >/dev/null
    store_s=$(secs_since "$t")
    pending=$(bench_psql -c "SELECT count(*) FROM dlq_list('$q', batch_size => 100)")
    [ "$pending" = 100 ] || [ "$size" -lt 100 ] || { echo "first page holds $pending messages" >&2; exit 1; }
    page=$(first_page)
    t=$(bench_now_ms)
    replayed=$(storage_reprocess_all "$q")
    acked=$(storage_claim_ack "$q")
    handback_s=$(secs_since "$t")
    if [ "$replayed" != "$size" ] || [ "$acked" != "$size" ]; then
        echo "cycle $c: replayed $replayed, acked $acked of $size" >&2
        exit 1
    fi
    t=$(bench_now_ms)
    for ((i = 0; i < 3000; i++)); do
        [ "$(storage_count "$q" "resolved + expired")" = 0 ] && break
        sleep 0.2
    done
    [ "$(storage_count "$q" "resolved + expired")" = 0 ] || { echo "cycle $c: the worker did not purge" >&2; exit 1; }
    purge_s=$(secs_since "$t")
    ms=$(storage_rel_size dlq.messages)
    es=$(storage_rel_size dlq.events)
    parts=$(storage_partitions dlq.messages)
    echo "$c $ms $es $parts $page $store_s $handback_s $purge_s" >>"$out"
    printf '%5d %12s %12s %6s %10s %8s %10s %8s\n' "$c" "$(storage_mb "$ms")" "$(storage_mb "$es")" "$parts" "$page" "$store_s" "$handback_s" "$purge_s"
done
left=$(bench_psql -c "SELECT count(*) FROM dlq.message WHERE queue = '$q'")
[ "$left" = 0 ] || { echo "$left messages left in $q" >&2; exit 1; }

ref=$((cycles >= 2 ? 2 : 1))
read -r _ m2 _ _ p2 _ <<<"$(sed -n "${ref}p" "$out")"
read -r _ mn _ _ pn _ <<<"$(sed -n "${cycles}p" "$out")"
echo "cycle $cycles vs cycle $ref: dlq.messages $(storage_mb "$mn") / $(storage_mb "$m2") = $(bench_ratio "$mn" "$m2") x;" \
    "first page $pn / $p2 ms = $(bench_ratio "$pn" "$p2") x"
bench_report "## Steady state (bench_81_storage_steady.sh, issue 12)" "" \
    "$cycles back-to-back cycles of $size messages: \`dlq_store\` (a commit per 2000), \`dlq_reprocess_all\`, one consumer" \
    "\`dlq_claim\`ing 1000 at a time and \`dlq_ack\`ing (a commit per batch), then waiting for the worker to purge them" \
    "(resolved_retention 0); autovacuum at its defaults; $interval_note. Sizes after the purge, summed over the" \
    "leaf partitions with indexes and TOAST; first page = \`dlq_list\` of the queue's pending messages right after" \
    "the store, median of 5 pgbench runs of 200 calls. Goal: cycle 20 within 1.2x of cycle 2." "" \
    "| | cycle $ref | cycle $cycles | ratio |" "|---|---:|---:|---:|" \
    "| dlq.messages | $(storage_mb "$m2") | $(storage_mb "$mn") | $(bench_ratio "$mn" "$m2") |" \
    "| first page ms | $p2 | $pn | $(bench_ratio "$pn" "$p2") |" "" \
    "| cycle | dlq.messages | dlq.events | leaf relations | first page ms | store s | hand-back s | purge wait s |" \
    "|---:|---:|---:|---:|---:|---:|---:|---:|"
while read -r c ms es parts page st hb pu; do
    bench_report "| $c | $(storage_mb "$ms") | $(storage_mb "$es") | $parts | $page | $st | $hb | $pu |"
done <"$out"
leaves=$(bench_psql -F ' ' -c "SELECT coalesce(string_agg(format('%s %s', relid, pg_size_pretty(pg_total_relation_size(relid))), ', ' ORDER BY relid::text), 'dlq.messages ' || pg_size_pretty(pg_total_relation_size('dlq.messages')))
                                   FROM pg_partition_tree('dlq.messages') WHERE isleaf")
echo "after cycle $cycles, per relation: $leaves"
bench_report "" "After cycle $cycles, per relation (with indexes): $leaves." ""
storage_cleanup
bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
