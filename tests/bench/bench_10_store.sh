#!/usr/bin/env bash
# dlq_store throughput against a bare INSERT of the same row into a lookalike
# of dlq.messages (same columns, defaults, identity, checks and indexes), with
# pgbench, 4 clients, prepared statements on both sides.  Three variants:
#   plain          no dedup_key: INSERT ... RETURNING vs dlq_store
#   dedup-distinct dedup_key almost always new: INSERT ... ON CONFLICT on the
#                  same partial unique index vs dlq_store with dedup_key
#   dedup-repeated 1000 keys, so nearly every call folds into an existing
#                  message: the same pair, mostly taking the DO UPDATE path
# Baseline and subject alternate (ABABAB) and the median of each side counts,
# so drift (tables and indexes growing, checkpoints, autovacuum) hits both.
# Goal (DESIGN.md section 6): dlq_store >= 0.85x the baseline.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

secs=$(bench_seconds "${BENCH_STORE_SECONDS:-4}")
rounds=${BENCH_ROUNDS:-7}
clients=4

bench_psql <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_store CASCADE;
CREATE SCHEMA bench_store;
-- Same columns, defaults, identity, CHECKs and indexes (including the
-- partial unique dedup index) as dlq.messages.
CREATE TABLE bench_store.messages (LIKE dlq.messages INCLUDING ALL);
-- The queues exist beforehand on both sides: creating one is a first-call cost.
SELECT count(dlq_store(q, '{}', 'create the queue')) = 3 AS queues_created
  FROM unnest(ARRAY['bench_store', 'bench_dedup', 'bench_repeat']) q \gset
DELETE FROM dlq.messages WHERE queue IN ('bench_store', 'bench_dedup', 'bench_repeat');
SQL

idx_subject=$(bench_psql -c "SELECT count(*) FROM pg_index WHERE indrelid = 'dlq.messages'::regclass")
idx_baseline=$(bench_psql -c "SELECT count(*) FROM pg_index WHERE indrelid = 'bench_store.messages'::regclass")
if [ "$idx_subject" != "$idx_baseline" ]; then
    echo "the lookalike has $idx_baseline indexes, dlq.messages $idx_subject" >&2
    exit 1
fi

# The row both sides store: what dlq_store derives (error_class, max_attempts,
# expires_at from the queue's retention) the baseline writes as constants.
comp="'loader'"
payload="jsonb_build_object('order_id', :id::bigint, 'sku', 'A-1042', 'qty', 3, 'note', 'backordered')"
err="'duplicate key value violates unique constraint \"orders_pkey\"'"
state="'23505'"
detail="jsonb_build_object('constraint', 'orders_pkey', 'table', 'orders')"
ins_cols="(queue, component, payload, error, sqlstate, error_class, error_detail, dedup_key, max_attempts, expires_at)"
conflict="ON CONFLICT (queue, dedup_key) WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review')
    DO UPDATE SET occurrences = m.occurrences + 1, error = excluded.error, sqlstate = excluded.sqlstate,
    error_class = excluded.error_class, error_detail = excluded.error_detail, last_failed_at = now()"

# store_scripts NAME QUEUE KEYS: the baseline and subject scripts (one path a
# line) for messages with dedup keys drawn from KEYS values, or none when
# KEYS is 0.
store_scripts() {
    local name=$1 queue=$2 keys=$3 key=NULL on_conflict= range=$3
    if [ "$keys" -gt 0 ]; then
        key="'k' || :id::text"
        on_conflict=$conflict
    else
        range=1000000000
    fi
    bench_script "store_base_$name" <<EOF
\set id random(1, $range)
INSERT INTO bench_store.messages AS m $ins_cols
VALUES ('$queue', $comp, $payload, $err, $state, 'permanent', $detail, $key, 5, now() + interval '30 days')
$on_conflict
RETURNING m.message_id;
EOF
    bench_script "store_subj_$name" <<EOF
\set id random(1, $range)
SELECT dlq_store('$queue', $payload, $err, $comp, $state, $detail, NULL, $key);
EOF
}
mapfile -t sp < <(store_scripts plain bench_store 0)
mapfile -t dd < <(store_scripts distinct bench_dedup 1000000000)
mapfile -t dr < <(store_scripts repeated bench_repeat 1000)

echo "pgbench: $clients clients, -M prepared, ${secs} s per run, $rounds runs per side, alternating"
bench_report "## dlq_store vs a bare INSERT into a lookalike table" "" \
    "pgbench, $clients clients, \`-M prepared\`, ${secs} s per run, baseline and subject alternated" \
    "$rounds times each, median tps. Goal: ratio >= 0.85. With the default synchronous_commit = on" \
    "every transaction waits for its WAL flush, which both sides share; the second set of rows" \
    "runs both sides with synchronous_commit = off (a session setting), which shows the CPU cost" \
    "of dlq_store itself." "" \
    "| variant | synchronous_commit | bare INSERT tps | dlq_store tps | ratio | runs (baseline, subject, ...) |" \
    "|---|---|---:|---:|---:|---|"

# measure NAME BASELINE-SCRIPT SUBJECT-SCRIPT: one row of the table.
measure() {
    local name=$1 base=$2 subj=$3 out b s runs
    out=$(bench_alternate "$rounds" "bench_tps '$base' $secs $clients" "bench_tps '$subj' $secs $clients") || return 1
    read -r b s runs <<<"$out"
    runs=$(printf '%.0f ' $runs)
    printf '%-16s %-4s baseline %8.0f tps   dlq_store %8.0f tps   ratio %s   (%s)\n' \
        "$name" "$sync" "$b" "$s" "$(bench_ratio "$s" "$b")" "${runs% }"
    bench_report "| $name | $sync | $(printf '%.0f' "$b") | $(printf '%.0f' "$s") | $(bench_ratio "$s" "$b") | ${runs% } |"
}

for sync in on off; do
    export PGOPTIONS="-c synchronous_commit=$sync"
    measure plain "${sp[0]}" "${sp[1]}"
    measure dedup-distinct "${dd[0]}" "${dd[1]}"
    measure dedup-repeated "${dr[0]}" "${dr[1]}"
done
unset PGOPTIONS

# Both sides must have stored the same kind of rows.
bench_psql <<'SQL'
SELECT format('stored: lookalike %s rows (%s occurrences), dlq.messages %s rows (%s occurrences)',
    (SELECT count(*) FROM bench_store.messages), (SELECT sum(occurrences) FROM bench_store.messages),
    (SELECT count(*) FROM dlq.messages WHERE queue IN ('bench_store', 'bench_dedup', 'bench_repeat')),
    (SELECT sum(occurrences) FROM dlq.messages WHERE queue IN ('bench_store', 'bench_dedup', 'bench_repeat')));
SQL
bench_report ""

# Leave the next benchmarks a clean database.
bench_psql <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA bench_store CASCADE;
DELETE FROM dlq.messages WHERE queue IN ('bench_store', 'bench_dedup', 'bench_repeat');
DELETE FROM dlq.queues WHERE queue IN ('bench_store', 'bench_dedup', 'bench_repeat');
VACUUM dlq.messages;
SQL
