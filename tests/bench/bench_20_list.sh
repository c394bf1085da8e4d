#!/usr/bin/env bash
# Keyset pages stay cheap however deep they are: with 1M messages
# (x BENCH_SCALE) in one queue, the latency of the last page of 100
# (cursor 100 ids before the end) against the first page, for dlq_list and
# dlq_list_page, and the same two pages fetched by OFFSET for contrast.
# Another queue holds 250k (x BENCH_SCALE) older messages, as when a burst of
# failures of one pipeline is followed by another's: a page must still be a
# bounded range of its own queue's index entries, not a walk over the other
# queue's rows.
# pgbench, one client, prepared statements; first and last page alternate
# (ABABAB) and the median of each side counts.
# Goal (DESIGN.md section 6): last page <= 1.2x the first page.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

rows=$(bench_scaled "${BENCH_LIST_ROWS:-1000000}" 1000)
other=$(bench_scaled "${BENCH_LIST_OTHER_ROWS:-250000}" 1000)
secs=$(bench_seconds "${BENCH_LIST_SECONDS:-5}")
rounds=${BENCH_ROUNDS:-3}
page=100

# Loading writes dlq.messages directly as its owner (the superuser here):
# dlq_store for a million rows would only measure dlq_store again.
echo "loading $other messages into queue bench_other, then $rows into bench_list"
start=$(bench_now_ms)
bench_psql -v rows="$rows" -v other="$other" <<'SQL'
SET client_min_messages = warning;
SELECT count(dlq_store(q, '{}', 'create the queue')) = 2 AS queues_created
  FROM unnest(ARRAY['bench_other', 'bench_list']) q \gset
DELETE FROM dlq.messages WHERE queue IN ('bench_other', 'bench_list');
INSERT INTO dlq.messages (queue, component, payload, error, sqlstate, error_class, error_detail,
                          max_attempts, expires_at)
SELECT q, 'loader',
       jsonb_build_object('order_id', g, 'sku', 'A-' || (g % 5000), 'qty', g % 7),
       'duplicate key value violates unique constraint "orders_pkey"', '23505', 'permanent',
       jsonb_build_object('constraint', 'orders_pkey', 'table', 'orders'),
       5, now() + interval '30 days'
  FROM (VALUES ('bench_other', :other), ('bench_list', :rows)) v(q, n), generate_series(1, n) g;
VACUUM ANALYZE dlq.messages;
SQL
echo "loaded in $(bench_elapsed_ms "$start") ms"

# cursor QUEUE: the cursor of the last full page, 100 messages before the end.
cursor() {
    bench_psql -c "SELECT message_id FROM dlq.messages WHERE queue = '$1'
        ORDER BY message_id DESC OFFSET $page LIMIT 1"
}
last_cursor=$(cursor bench_list)
other_cursor=$(cursor bench_other)
# For newest_first, the last page is the oldest 100.
desc_cursor=$(bench_psql -c "SELECT message_id FROM dlq.messages WHERE queue = 'bench_list'
    ORDER BY message_id OFFSET $page LIMIT 1")
offset=$((rows - page))

# Each page must really hold 100 messages, the last page the newest ones.
check=$(bench_psql -c "SELECT (SELECT count(*) FROM dlq_list('bench_list', NULL, $page)),
    (SELECT count(*) FROM dlq_list('bench_list', $last_cursor, $page)),
    (SELECT max(message_id) FROM dlq_list('bench_list', $last_cursor, $page))
      = (SELECT max(message_id) FROM dlq.messages WHERE queue = 'bench_list'),
    (SELECT dlq_list_page('bench_list', $last_cursor, $page) ->> 'has_more')")
if [ "$check" != "$page|$page|t|false" ]; then
    echo "unexpected pages: $check" >&2
    exit 1
fi

s_list_first=$(echo "SELECT * FROM dlq_list('bench_list', NULL, $page);" | bench_script list_first)
s_list_last=$(echo "SELECT * FROM dlq_list('bench_list', $last_cursor, $page);" | bench_script list_last)
s_other_first=$(echo "SELECT * FROM dlq_list('bench_other', NULL, $page);" | bench_script other_first)
s_other_last=$(echo "SELECT * FROM dlq_list('bench_other', $other_cursor, $page);" | bench_script other_last)
s_page_first=$(echo "SELECT dlq_list_page('bench_list', NULL, $page);" | bench_script page_first)
s_page_last=$(echo "SELECT dlq_list_page('bench_list', $last_cursor, $page);" | bench_script page_last)
s_desc_first=$(echo "SELECT * FROM dlq_list('bench_list', NULL, $page, newest_first => true);" |
    bench_script desc_first)
s_desc_last=$(echo "SELECT * FROM dlq_list('bench_list', $desc_cursor, $page, newest_first => true);" |
    bench_script desc_last)
offset_sql="SELECT * FROM dlq.messages WHERE queue = 'bench_list' AND status = 'pending' ORDER BY message_id"
s_offset_first=$(echo "$offset_sql OFFSET 0 LIMIT $page;" | bench_script offset_first)
s_offset_last=$(echo "$offset_sql OFFSET $offset LIMIT $page;" | bench_script offset_last)

echo "pgbench: 1 client, -M prepared, ${secs} s per run, $rounds runs per side, alternating"
bench_report "## A page of $page at the end of $rows messages vs the first page" "" \
    "Queue bench_list holds $rows messages, preceded by $other older ones of queue bench_other." \
    "pgbench, 1 client, \`-M prepared\`, ${secs} s per run, first and last page alternated" \
    "$rounds times each, median of the average latency. Goal: dlq_list last/first <= 1.2." \
    "The last page is the cursor 100 ids before the newest message (for newest_first, the" \
    "oldest 100). OFFSET is the same page by \`ORDER BY message_id OFFSET n LIMIT 100\`." "" \
    "| query | first page ms | last page ms | last / first | runs (first, last, ...) |" \
    "|---|---:|---:|---:|---|"

measure() {
    local name=$1 first=$2 last=$3 out f l runs
    out=$(bench_alternate "$rounds" "bench_latency '$first' $secs" "bench_latency '$last' $secs") || return 1
    read -r f l runs <<<"$out"
    printf '%-26s first %9.3f ms   last %9.3f ms   last/first %s   (%s)\n' \
        "$name" "$f" "$l" "$(bench_ratio "$l" "$f")" "$runs"
    bench_report "| $name | $f | $l | $(bench_ratio "$l" "$f") | $runs |"
}

measure "dlq_list" "$s_list_first" "$s_list_last"
measure "dlq_list_page" "$s_page_first" "$s_page_last"
measure "dlq_list newest_first" "$s_desc_first" "$s_desc_last"
measure "dlq_list, queue bench_other" "$s_other_first" "$s_other_last"
measure "OFFSET (contrast)" "$s_offset_first" "$s_offset_last"
bench_report ""

bench_psql <<'SQL'
SET client_min_messages = warning;
DELETE FROM dlq.messages WHERE queue IN ('bench_other', 'bench_list');
DELETE FROM dlq.queues WHERE queue IN ('bench_other', 'bench_list');
VACUUM dlq.messages;
SQL
