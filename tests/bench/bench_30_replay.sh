#!/usr/bin/env bash
# The replay cycle of a NOTIFY queue: dlq_reprocess_all hands 100k messages
# (x BENCH_SCALE) to consumers, one consumer claims them 1000 at a time and
# acks each batch (a transaction per batch, as a real consumer would), against
# the baseline of two plain UPDATEs of the same rows' status (pending ->
# replaying, replaying -> resolved).  A LISTEN client registered with
# dlq_listen counts the notifications: exactly one per dlq_reprocess_all call.
# Subject and baseline alternate; the median of each side counts.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

rows=$(bench_scaled "${BENCH_REPLAY_ROWS:-100000}" 1000)
rounds=${BENCH_ROUNDS:-3}
queue=bench_replay

echo "loading $rows pending messages into queue $queue"
bench_psql -v rows="$rows" -v q="$queue" <<'SQL'
SET client_min_messages = warning;
SELECT (dlq_configure(:'q', max_attempts => 1000)).queue IS NOT NULL AS configured \gset
DELETE FROM dlq.messages WHERE queue = :'q';
INSERT INTO dlq.messages (queue, component, payload, error, sqlstate, error_class, max_attempts, expires_at)
SELECT :'q', 'loader', jsonb_build_object('order_id', g, 'sku', 'A-' || (g % 5000)),
       'deadlock detected', '40P01', 'transient', 1000, now() + interval '30 days'
  FROM generate_series(1, :rows) g;
VACUUM ANALYZE dlq.messages;
SQL

# The LISTEN client: a psql reading from a fifo, registered as a consumer.
fifo="$BENCH_DIR/replay_listen.fifo"
listen_out="$BENCH_DIR/replay_listen.out"
rm -f "$fifo"
mkfifo "$fifo"
"$PG_BIN/psql" -X -At <"$fifo" >"$listen_out" 2>&1 &
listener=$!
exec 7>"$fifo"
echo "SELECT dlq_listen('$queue');" >&7
for i in $(seq 1 50); do
    [ "$(bench_psql -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")" -ge 1 ] && break
    sleep 0.1
done

# reset: every row back to pending (and into the live partition, slot 0), dead rows vacuumed away.
reset() {
    bench_psql -c "UPDATE dlq.messages SET status = 'pending', attempts = 0, replay_request_id = NULL,
        claimed_by = NULL, claim_expires_at = NULL, resolved_at = NULL, slot = 0 WHERE queue = '$queue'" \
        -c "VACUUM ANALYZE dlq.messages" >/dev/null
}

# rate MS: messages/s of $rows messages in MS milliseconds.
rate() {
    awk -v n="$rows" -v ms="$1" 'BEGIN { printf "%.0f\n", n * 1000 / (ms > 0 ? ms : 1) }'
}
rm -f "$BENCH_DIR/replay_only.txt" "$BENCH_DIR/update_only.txt"

# subject: prints messages/s of reprocess_all + claim + ack of every row.
subject() {
    reset
    local start replayed
    start=$(bench_now_ms)
    replayed=$(bench_psql -c "SELECT dlq_reprocess_all('$queue') ->> 'replayed'")
    rate "$(bench_elapsed_ms "$start")" >>"$BENCH_DIR/replay_only.txt"
    bench_psql -c "DO \$\$
        DECLARE ids bigint[];
        BEGIN
            LOOP
                SELECT array_agg(message_id) INTO ids FROM dlq_claim('$queue', 1000, '10 min');
                EXIT WHEN ids IS NULL;
                PERFORM dlq_ack(ids);
                COMMIT;
            END LOOP;
        END \$\$;" >/dev/null
    local ms=$(bench_elapsed_ms "$start")
    local resolved
    resolved=$(bench_psql -c "SELECT count(*) FROM dlq.messages WHERE queue = '$queue' AND status = 'resolved'")
    if [ "$replayed" != "$rows" ] || [ "$resolved" != "$rows" ]; then
        echo "subject replayed $replayed, resolved $resolved of $rows" >&2
        return 1
    fi
    echo "SELECT 1;" >&7
    rate "$ms"
}

# baseline: the same rows' status changed by two plain UPDATEs.
baseline() {
    reset
    local start
    start=$(bench_now_ms)
    bench_psql -c "UPDATE dlq.messages SET status = 'replaying' WHERE queue = '$queue' AND status = 'pending'" >/dev/null
    rate "$(bench_elapsed_ms "$start")" >>"$BENCH_DIR/update_only.txt"
    bench_psql -c "UPDATE dlq.messages SET status = 'resolved' WHERE queue = '$queue' AND status = 'replaying'" >/dev/null
    rate "$(bench_elapsed_ms "$start")"
}

echo "$rounds rounds per side, alternating; $rows messages per round"
figures=$(bench_alternate "$rounds" subject baseline) || exit 1
read -r subj base all <<<"$figures"

# Let the listener print what it got, then stop it.
sleep 0.5
echo "SELECT 1;" >&7
echo '\q' >&7
exec 7>&-
wait "$listener" || true
notes=$(grep -c 'Asynchronous notification "dlq_bench_replay"' "$listen_out" || true)
per_call=$(bench_ratio "$notes" "$rounds")
ratio=$(bench_ratio "$subj" "$base")
# shellcheck disable=SC2046
replay_only=$(bench_median $(cat "$BENCH_DIR/replay_only.txt"))
# shellcheck disable=SC2046
update_only=$(bench_median $(cat "$BENCH_DIR/update_only.txt"))
ratio_only=$(bench_ratio "$replay_only" "$update_only")

echo "replay cycle (reprocess_all + claim + ack): $subj messages/s"
echo "baseline (two plain UPDATEs of status):     $base messages/s"
echo "ratio: $ratio"
echo "dlq_reprocess_all alone: $replay_only messages/s; UPDATE pending -> replaying: $update_only messages/s; ratio $ratio_only"
echo "notifications received: $notes for $rounds calls ($per_call per call)"
echo "all runs (subject, baseline, ...): $all"

bench_report \
    "## Replay cycle of a NOTIFY queue (bench_30_replay.sh)" \
    "" \
    "$rows messages per round, $rounds rounds per side alternating, median. Subject: \`dlq_reprocess_all\`," \
    "then one consumer claims 1000 at a time and acks each batch in its own transaction. Baseline: two" \
    "plain \`UPDATE\`s of the same rows' status. A \`dlq_listen\` client counts notifications." \
    "" \
    "| measure | value |" \
    "|---|---|" \
    "| replay cycle, messages/s | $subj |" \
    "| baseline (2 UPDATEs), messages/s | $base |" \
    "| ratio subject / baseline | $ratio |" \
    "| \`dlq_reprocess_all\` alone, messages/s | $replay_only |" \
    "| UPDATE pending -> replaying alone, messages/s | $update_only |" \
    "| ratio | $ratio_only |" \
    "| notifications per dlq_reprocess_all call | $per_call ($notes in $rounds calls) |" \
    ""
