#!/usr/bin/env bash
# Storage of dlq.messages (issue 12, DESIGN.md section 7.4), against a
# minimal error table (bigint identity key + one (queue, status, id) index)
# and a lookalike of 1.0's dlq.messages, side by side in the same run:
#   store     dlq_store vs an INSERT of the same row into the minimal table
#             and into the 1.0 lookalike (pgbench, 4 clients, alternating)
#   handback  dlq_reprocess_all -> dlq_claim -> dlq_ack of 100k messages
#             (x BENCH_SCALE), a commit per batch of 1000, vs the same three
#             state changes as plain UPDATEs of the minimal table
#   bytes     bytes on disk per message after one store -> reprocess ->
#             claim -> ack cycle (dlq.messages, all partitions, + dlq.events,
#             with indexes and TOAST) vs the minimal table after the same
#             cycle; measured on the first handback round
#   purge     purge rate of closed messages (dlq.worker_rotate when dlq has
#             it, else dlq.worker_purge, called directly with the worker kept
#             out), and dlq_store throughput while the worker expires and
#             while it purges, as a ratio to the same load without the worker
# BENCH_STORAGE_PARTS picks parts (default "store handback purge").  The
# handback and purge parts TRUNCATE dlq.messages and dlq.events, and purge
# changes dlq.databases and dlq.partition_interval (if the server has it)
# with ALTER SYSTEM, reset at the end: run it on a throwaway cluster
# (tests/bench/run.sh) as a superuser.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"
. "$here/storage_lib.sh"
trap storage_cleanup EXIT

parts=${BENCH_STORAGE_PARTS:-store handback purge}
want() { [[ " $parts " == *" $1 "* ]]; }

bench_psql <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_storage CASCADE;
CREATE SCHEMA bench_storage;
SQL
storage_minimal_table bench_storage.minimal
echo "dlq.messages: $(storage_partitions dlq.messages) leaf relation(s);" \
    "payload $(bench_psql -c "SELECT pg_column_size($(storage_payload 123456))") bytes"
bench_report "## Storage (bench_80_storage.sh, issue 12)" "" \
    "dlq.messages has $(storage_partitions dlq.messages) leaf relation(s) in this run." \
    "Minimal table: bigint identity key + one (queue, status, id) index, the stored row's columns and" \
    "the three a consumer changes." ""

# ---------------------------------------------------------------- store --
if want store; then
    secs=$(bench_seconds "${BENCH_STORE_SECONDS:-4}")
    rounds=${BENCH_ROUNDS:-5}
    # The lookalike of 1.0's dlq.messages: its columns, defaults, CHECKs and
    # its eleven indexes (primary key + ten), written out so that it stays
    # 1.0's shape whatever dlq.messages becomes.
    bench_psql <<'SQL'
SET client_min_messages = warning;
CREATE TYPE bench_storage.status AS ENUM ('pending', 'replaying', 'resolved', 'review', 'expired');
CREATE TABLE bench_storage.lookalike (
    message_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue               text NOT NULL,
    component           text,
    status              bench_storage.status NOT NULL DEFAULT 'pending',
    payload             jsonb NOT NULL,
    error               text NOT NULL,
    sqlstate            char(5),
    error_class         text NOT NULL CHECK (error_class IN ('transient', 'permanent')),
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
    operation           text CHECK (operation IN ('INSERT', 'UPDATE'))
);
CREATE INDEX ON bench_storage.lookalike (queue, status, message_id);
CREATE INDEX ON bench_storage.lookalike (queue, status, component, message_id);
CREATE INDEX ON bench_storage.lookalike (queue, message_id);
CREATE INDEX ON bench_storage.lookalike (status, message_id);
CREATE UNIQUE INDEX ON bench_storage.lookalike (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review');
CREATE INDEX ON bench_storage.lookalike (expires_at) WHERE status = 'pending';
CREATE INDEX ON bench_storage.lookalike (claim_expires_at) WHERE status = 'replaying';
CREATE INDEX ON bench_storage.lookalike (next_retry_at) WHERE status = 'pending' AND next_retry_at IS NOT NULL;
CREATE INDEX ON bench_storage.lookalike (resolved_at) WHERE status IN ('resolved', 'expired');
CREATE INDEX ON bench_storage.lookalike (queue, replay_request_id) WHERE status = 'replaying';
-- The queue exists beforehand: creating one is a first-call cost.
SELECT (dlq_configure('bench_storage_store')).queue IS NOT NULL AS configured \gset
SQL
    payload=$(storage_payload ":id::bigint")
    s_min=$(bench_script storage_min <<EOF
\set id random(1, 1000000000)
INSERT INTO bench_storage.minimal (queue, component, payload, error, sqlstate, error_detail)
VALUES ('bench_storage_store', $STORAGE_COMPONENT, $payload, $STORAGE_ERROR, $STORAGE_SQLSTATE, $STORAGE_DETAIL)
RETURNING id;
EOF
)
    s_look=$(bench_script storage_look <<EOF
\set id random(1, 1000000000)
INSERT INTO bench_storage.lookalike (queue, component, payload, error, sqlstate, error_class, error_detail, max_attempts, expires_at)
VALUES ('bench_storage_store', $STORAGE_COMPONENT, $payload, $STORAGE_ERROR, $STORAGE_SQLSTATE, 'permanent', $STORAGE_DETAIL, 5, now() + interval '30 days')
RETURNING message_id;
EOF
)
    s_subj=$(bench_script storage_subj <<EOF
\set id random(1, 1000000000)
SELECT dlq_store('bench_storage_store', $payload, $STORAGE_ERROR, $STORAGE_COMPONENT, $STORAGE_SQLSTATE, $STORAGE_DETAIL);
EOF
)
    bench_report "### dlq_store vs INSERT into the minimal table and into 1.0's lookalike" "" \
        "pgbench, 4 clients, \`-M prepared\`, ${secs} s per run; minimal, lookalike, dlq_store alternated" \
        "$rounds times; median tps. Goals: >= 0.75x minimal, >= 0.85x lookalike." "" \
        "| synchronous_commit | minimal tps | lookalike tps | dlq_store tps | dlq_store/minimal | dlq_store/lookalike | runs (minimal, lookalike, dlq_store, ...) |" \
        "|---|---:|---:|---:|---:|---:|---|"
    for sync in ${BENCH_STORAGE_SYNC:-on}; do
        export PGOPTIONS="-c synchronous_commit=$sync"
        t_min=() t_look=() t_subj=() all=()
        for ((i = 0; i < rounds; i++)); do
            x=$(bench_tps "$s_min" "$secs" 4); t_min+=("$x"); all+=("$(storage_int "$x")")
            x=$(bench_tps "$s_look" "$secs" 4); t_look+=("$x"); all+=("$(storage_int "$x")")
            x=$(bench_tps "$s_subj" "$secs" 4); t_subj+=("$x"); all+=("$(storage_int "$x")")
        done
        unset PGOPTIONS
        m=$(bench_median "${t_min[@]}") l=$(bench_median "${t_look[@]}") s=$(bench_median "${t_subj[@]}")
        printf 'store (synchronous_commit=%s): minimal %.0f tps, lookalike %.0f tps, dlq_store %.0f tps: %s x minimal, %s x lookalike\n' \
            "$sync" "$m" "$l" "$s" "$(bench_ratio "$s" "$m")" "$(bench_ratio "$s" "$l")"
        echo "  runs (minimal, lookalike, dlq_store, ...): ${all[*]}"
        bench_report "| $sync | $(storage_int "$m") | $(storage_int "$l") | $(storage_int "$s") | $(bench_ratio "$s" "$m") | $(bench_ratio "$s" "$l") | ${all[*]} |"
    done
    bench_report ""
    bench_psql -c "SELECT format('stored: minimal %s, lookalike %s, dlq_store %s rows',
        (SELECT count(*) FROM bench_storage.minimal), (SELECT count(*) FROM bench_storage.lookalike),
        (SELECT count(*) FROM dlq.message WHERE queue = 'bench_storage_store'))"
    bench_psql -c "TRUNCATE bench_storage.minimal" -c "DROP TABLE bench_storage.lookalike" \
        -c "SELECT dlq_discard_all('bench_storage_store') IS NOT NULL" >/dev/null
fi

# ---------------------------------------------------- handback and bytes --
if want handback; then
    rows=$(bench_scaled "${BENCH_HANDBACK_ROWS:-100000}" 1000)
    rounds=${BENCH_HANDBACK_ROUNDS:-3}
    q=bench_storage_handback
    bench_psql -c "SELECT (dlq_configure('$q', max_attempts => 1000, require_listener => false)).queue" >/dev/null
    rate() { awk -v n="$rows" -v ms="$1" 'BEGIN { printf "%.0f\n", n * 1000 / (ms > 0 ? ms : 1) }'; }
    echo "handback: $rows messages per round, $rounds rounds per side, alternating"

    # subject ROUND: fresh dlq.messages and dlq.events, N messages stored,
    # then the timed hand-back; on round 1 the sizes.
    subject() {
        bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
        storage_store "$q" "$rows" >/dev/null
        bench_psql -c "VACUUM ANALYZE dlq.messages" >/dev/null
        local start ms1 ms acked
        start=$(bench_now_ms)
        storage_reprocess_all "$q" >"$BENCH_DIR/storage_replayed"
        ms1=$(bench_elapsed_ms "$start")
        acked=$(storage_claim_ack "$q")
        ms=$(bench_elapsed_ms "$start")
        local resolved
        resolved=$(bench_psql -c "SELECT count(*) FROM dlq.message WHERE queue = '$q' AND status = 'resolved'")
        if [ "$(cat "$BENCH_DIR/storage_replayed")" != "$rows" ] || [ "$acked" != "$rows" ] || [ "$resolved" != "$rows" ]; then
            echo "subject: replayed $(cat "$BENCH_DIR/storage_replayed"), acked $acked, resolved $resolved of $rows" >&2
            return 1
        fi
        echo "$(rate "$ms1") $(rate $((ms - ms1)))" >>"$BENCH_DIR/storage_subject_parts"
        local sizes
        sizes="$(storage_rel_size dlq.messages) $(storage_rel_size dlq.events)"
        bench_psql -c "VACUUM dlq.messages" -c "VACUUM dlq.events" >/dev/null
        echo "$sizes $(storage_rel_size dlq.messages) $(storage_rel_size dlq.events)" >>"$BENCH_DIR/storage_bytes_subject"
        rate "$ms"
    }
    baseline() {
        bench_psql -c "TRUNCATE bench_storage.minimal" >/dev/null
        storage_minimal_store bench_storage.minimal "$q" "$rows" >/dev/null
        bench_psql -c "VACUUM ANALYZE bench_storage.minimal" >/dev/null
        local start ms1 ms resolved
        start=$(bench_now_ms)
        storage_minimal_replaying bench_storage.minimal "$q"
        ms1=$(bench_elapsed_ms "$start")
        storage_minimal_claim_resolve bench_storage.minimal "$q"
        ms=$(bench_elapsed_ms "$start")
        resolved=$(bench_psql -c "SELECT count(*) FROM bench_storage.minimal WHERE status = 'resolved'")
        if [ "$resolved" != "$rows" ]; then
            echo "baseline: resolved $resolved of $rows" >&2
            return 1
        fi
        echo "$(rate "$ms1") $(rate $((ms - ms1)))" >>"$BENCH_DIR/storage_baseline_parts"
        local size
        size=$(storage_rel_size bench_storage.minimal)
        bench_psql -c "VACUUM bench_storage.minimal" >/dev/null
        echo "$size $(storage_rel_size bench_storage.minimal)" >>"$BENCH_DIR/storage_bytes_minimal"
        rate "$ms"
    }
    rm -f "$BENCH_DIR"/storage_subject_parts "$BENCH_DIR"/storage_baseline_parts "$BENCH_DIR"/storage_bytes_*
    figures=$(bench_alternate "$rounds" subject baseline) || exit 1
    read -r subj base all <<<"$figures"
    # A second baseline: the three state changes as three whole-queue
    # UPDATEs, no batches and no commit in between.
    bulk=()
    for ((i = 0; i < rounds; i++)); do
        bench_psql -c "TRUNCATE bench_storage.minimal" >/dev/null
        storage_minimal_store bench_storage.minimal "$q" "$rows" >/dev/null
        bench_psql -c "VACUUM ANALYZE bench_storage.minimal" >/dev/null
        start=$(bench_now_ms)
        storage_minimal_bulk bench_storage.minimal "$q"
        bulk+=("$(rate "$(bench_elapsed_ms "$start")")")
    done
    bulk_med=$(bench_median "${bulk[@]}")
    # shellcheck disable=SC2046
    med_col() { bench_median $(awk -v c="$2" '{ print $c }' "$1"); }
    s_rep=$(med_col "$BENCH_DIR/storage_subject_parts" 1) s_ca=$(med_col "$BENCH_DIR/storage_subject_parts" 2)
    b_rep=$(med_col "$BENCH_DIR/storage_baseline_parts" 1) b_ca=$(med_col "$BENCH_DIR/storage_baseline_parts" 2)
    echo "handback: dlq $(storage_int "$subj") msg/s, plain UPDATEs $(storage_int "$base") msg/s, ratio $(bench_ratio "$subj" "$base")"
    echo "  dlq_reprocess_all alone $(storage_int "$s_rep") msg/s vs UPDATE -> replaying $(storage_int "$b_rep") msg/s;" \
        "claim+ack $(storage_int "$s_ca") msg/s vs claim+resolve UPDATEs $(storage_int "$b_ca") msg/s"
    echo "  runs (dlq, UPDATEs, ...): $all"
    echo "  three whole-queue UPDATEs: $(storage_int "$bulk_med") msg/s (runs ${bulk[*]}); ratio $(bench_ratio "$subj" "$bulk_med")"
    bench_report "### Hand-back and consume of $rows messages" "" \
        "\`dlq_reprocess_all\` (queue with require_listener = false, no replay target), then one consumer" \
        "\`dlq_claim\`s 1000 at a time and \`dlq_ack\`s them, a commit per batch; baseline: the same state changes" \
        "as plain UPDATEs of the minimal table (pending -> replaying in one statement; then per batch of 1000" \
        "claimed_by/claim_expires_at with SKIP LOCKED returning the payloads, and -> resolved). Both sides start from" \
        "freshly truncated and vacuumed tables; $rounds rounds each, alternating, median." \
        "Goals: >= 2x 1.0's rate, >= 0.5x the plain UPDATEs." "" \
        "| measure | dlq msg/s | plain UPDATEs msg/s | ratio |" "|---|---:|---:|---:|" \
        "| whole hand-back and consume | $(storage_int "$subj") | $(storage_int "$base") | $(bench_ratio "$subj" "$base") |" \
        "| reprocess_all / UPDATE -> replaying | $(storage_int "$s_rep") | $(storage_int "$b_rep") | $(bench_ratio "$s_rep" "$b_rep") |" \
        "| claim + ack / claim + resolve UPDATEs | $(storage_int "$s_ca") | $(storage_int "$b_ca") | $(bench_ratio "$s_ca" "$b_ca") |" \
        "| whole, vs three whole-queue UPDATEs (no batches) | $(storage_int "$subj") | $(storage_int "$bulk_med") | $(bench_ratio "$subj" "$bulk_med") |" \
        "" "Runs (dlq, UPDATEs, ...): $all; three whole-queue UPDATEs: ${bulk[*]}" ""

    # Bytes per message after each round's cycle (autovacuum may or may not
    # have run during it, so the figure moves): medians over the rounds.
    bm=$(med_col "$BENCH_DIR/storage_bytes_subject" 1) be=$(med_col "$BENCH_DIR/storage_bytes_subject" 2)
    vm=$(med_col "$BENCH_DIR/storage_bytes_subject" 3) ve=$(med_col "$BENCH_DIR/storage_bytes_subject" 4)
    mn=$(med_col "$BENCH_DIR/storage_bytes_minimal" 1) mv=$(med_col "$BENCH_DIR/storage_bytes_minimal" 2)
    per() { awk -v b="$1" -v n="$rows" 'BEGIN { printf "%.0f", b / n }'; }
    per_all() { awk -v n="$rows" '{ printf "%s%.0f", (NR > 1 ? " " : ""), ($1 + $2) / n }' "$1"; }
    bm=$(storage_int "$bm") be=$(storage_int "$be") vm=$(storage_int "$vm") ve=$(storage_int "$ve") mn=$(storage_int "$mn") mv=$(storage_int "$mv")
    echo "bytes/message after one cycle (medians of $rounds rounds): dlq $(per $((bm + be))) (messages $(per "$bm") + events $(per "$be")), minimal $(per "$mn"): $(bench_ratio $((bm + be)) "$mn") x;" \
        "after VACUUM: dlq $(per $((vm + ve))), minimal $(per "$mv"): $(bench_ratio $((vm + ve)) "$mv") x"
    bench_report "### Bytes on disk per message after one store -> reprocess -> claim -> ack cycle" "" \
        "$rows messages with a $(bench_psql -c "SELECT pg_column_size($(storage_payload 123456))")-byte payload, stored by \`dlq_store\` (minimal table: INSERT), then the" \
        "hand-back rounds above; \`pg_total_relation_size\` summed over the leaf partitions of dlq.messages," \
        "plus dlq.events (both truncated before each round), median of the $rounds rounds (autovacuum may or may" \
        "not get to a table during a round, which moves the figure; per round, dlq total then minimal:" \
        "$(per_all "$BENCH_DIR/storage_bytes_subject") / $(awk -v n="$rows" '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 / n }' "$BENCH_DIR/storage_bytes_minimal"))." \
        "Goal: <= 1.25x the minimal table." "" \
        "| when | dlq.messages B/msg | dlq.events B/msg | dlq total B/msg | minimal B/msg | ratio |" "|---|---:|---:|---:|---:|---:|" \
        "| right after the cycle | $(per "$bm") | $(per "$be") | $(per $((bm + be))) | $(per "$mn") | $(bench_ratio $((bm + be)) "$mn") |" \
        "| after VACUUM of each | $(per "$vm") | $(per "$ve") | $(per $((vm + ve))) | $(per "$mv") | $(bench_ratio $((vm + ve)) "$mv") |" ""
    bench_psql -c "TRUNCATE dlq.messages, dlq.events" -c "TRUNCATE bench_storage.minimal" >/dev/null
fi

# ---------------------------------------------------------------- purge --
if want purge; then
    n=$(bench_scaled "${BENCH_PURGE_ROWS:-200000}" 1000)
    secs=$(bench_seconds "${BENCH_PURGE_SECONDS:-6}")
    batch=$(bench_psql -c "SHOW dlq.batch_size")
    qa=bench_storage_purge_a qb=bench_storage_purge_b qs=bench_storage_purge_store
    has_rotate=$(storage_has_function dlq.worker_rotate)
    echo "purge: $n messages; dlq.batch_size $batch; dlq.worker_rotate: $([ "$has_rotate" = 1 ] && echo yes || echo no)"
    storage_worker_out
    bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
    bench_psql <<SQL >/dev/null
SELECT dlq_configure('$qa', retention => '1 second', resolved_retention => '0', require_listener => false);
SELECT dlq_configure('$qb', retention => '1 second', require_listener => false);
SELECT dlq_configure('$qs');
SQL

    # (a) The purge rate, by direct calls with the worker out: N messages
    # stored, expired by dlq.worker_expire batches (timed too), then purged.
    storage_store "$qa" "$n" >/dev/null
    sleep 1.2
    start=$(bench_now_ms)
    bench_psql <<SQL
DO \$\$
BEGIN
    LOOP
        EXIT WHEN dlq.worker_expire($batch, 'bench', '$qa') = 0;
        COMMIT;
    END LOOP;
END \$\$;
SQL
    expire_ms=$(bench_elapsed_ms "$start")
    expired=$(storage_count "$qa" expired)
    [ "$expired" = "$n" ] || { echo "expired $expired of $n" >&2; exit 1; }
    # Only now a short dlq.partition_interval (a ring turning every second
    # while messages wait for a 7-day retention would move them round it):
    # the current closed partition ages past it.
    interval_note=$(storage_set_interval 1)
    echo "$interval_note"
    [ "$has_rotate" = 1 ] && sleep 1.2
    bench_psql -c "CHECKPOINT" >/dev/null
    start=$(bench_now_ms)
    if [ "$has_rotate" = 1 ]; then
        # Rotate until the queue's closed messages are gone (the first call
        # closes the slot holding them, a later one retires it), then the
        # DELETE-based purge for anything left behind.
        calls=$(bench_psql <<SQL
DO \$\$
DECLARE
    calls int := 0;
    r jsonb;
    t timestamptz;
    trace text := '';
BEGIN
    LOOP
        t := clock_timestamp();
        r := dlq.worker_rotate('bench');
        calls := calls + 1;
        COMMIT;
        trace := trace || format(' %s ms %s;', round(extract(epoch FROM clock_timestamp() - t) * 1000), r);
        EXIT WHEN (SELECT coalesce(sum(resolved + expired), 0) FROM etl_status('$qa')) = 0 OR calls >= 200;
        IF coalesce((r ->> 'purged')::bigint, 0) = 0 AND (r ->> 'rotated')::boolean IS NOT TRUE THEN
            PERFORM pg_sleep(0.05);
        END IF;
    END LOOP;
    t := clock_timestamp();
    LOOP
        EXIT WHEN dlq.worker_purge($batch, 'bench', '$qa') = 0;
        COMMIT;
    END LOOP;
    trace := trace || format(' worker_purge %s ms', round(extract(epoch FROM clock_timestamp() - t) * 1000));
    PERFORM set_config('bench.calls', calls || ' calls:' || trace, false);
END \$\$;
SELECT current_setting('bench.calls');
SQL
)
        how="dlq.worker_rotate, then dlq.worker_purge ($calls)"
    else
        bench_psql <<SQL
DO \$\$
BEGIN
    LOOP
        EXIT WHEN dlq.worker_purge($batch, 'bench', '$qa') = 0;
        COMMIT;
    END LOOP;
END \$\$;
SQL
        how="dlq.worker_purge($batch) batches (DELETE)"
    fi
    purge_ms=$(bench_elapsed_ms "$start")
    left=$(bench_psql -c "SELECT count(*) FROM dlq.message WHERE queue = '$qa'")
    [ "$left" = 0 ] || { echo "purge left $left messages" >&2; exit 1; }
    storage_reset_interval
    expire_rate=$(awk -v n="$n" -v ms="$expire_ms" 'BEGIN { printf "%.0f", n * 1000 / (ms > 0 ? ms : 1) }')
    purge_rate=$(awk -v n="$n" -v ms="$purge_ms" 'BEGIN { printf "%.0f", n * 1000 / (ms > 0 ? ms : 1) }')
    echo "direct calls: expiry $expire_rate msg/s ($expire_ms ms), purge $purge_rate msg/s ($purge_ms ms, $how)"

    # (b) dlq_store with and without the worker busy.  N expired-pending
    # messages in queue B (resolved_retention still 7 days), worker out.
    storage_store "$qb" "$n" >/dev/null
    bench_psql -c "VACUUM ANALYZE dlq.messages" >/dev/null
    sleep 1.2
    store_sql=$(bench_script storage_purge_store <<EOF
\set id random(1, 1000000000)
SELECT dlq_store('$qs', $(storage_payload ":id::bigint"), $STORAGE_ERROR, $STORAGE_COMPONENT, $STORAGE_SQLSTATE);
EOF
)
    tps_without1=$(storage_pgbench_progress "$BENCH_DIR/storage_pb0.log" "$store_sql" "$secs")

    # busy_run LABEL COLUMNS TARGET ACTION: start watching COLUMNS of queue B,
    # do ACTION (lets the worker work), run the load; prints
    # "overall-tps busy-tps busy-seconds busy-duration".
    busy_run() {
        local label=$1 cols=$2 target=$3 action=$4 watch="$BENCH_DIR/storage_watch_$1" tps from to bt bs
        rm -f "$watch"
        storage_watch "$qb" "$cols" "$watch"
        local watcher=$!
        sleep 0.5
        eval "$action"
        tps=$(storage_pgbench_progress "$BENCH_DIR/storage_pb_$label.log" "$store_sql" "$secs")
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
        read -r from to <<<"$(storage_busy_window "$watch" "$target")"
        read -r bt bs <<<"$(storage_busy_tps "$BENCH_DIR/storage_pb_$label.log" "$from" "$to")"
        echo "$tps $bt $bs $(awk -v f="$from" -v t="$to" 'BEGIN { printf "%.1f", t - f }')"
    }
    wait_count() {
        for _ in $(seq 1 3000); do
            [ "$(storage_count "$qb" "$1")" = "$2" ] && return 0
            sleep 0.1
        done
        echo "queue $qb: $1 did not reach $2" >&2
        return 1
    }
    read -r tps_exp busy_exp busy_exp_s busy_exp_d <<<"$(busy_run expiry pending 0 storage_worker_in)"
    wait_count pending 0
    read -r tps_pur busy_pur busy_pur_s busy_pur_d <<<"$(busy_run purge "resolved + expired" 0 \
        "storage_set_interval 1 >/dev/null; bench_psql -c \"SELECT dlq_configure('$qb', resolved_retention => '0')\" >/dev/null")"
    wait_count "resolved + expired" 0
    storage_worker_out
    tps_without2=$(storage_pgbench_progress "$BENCH_DIR/storage_pb1.log" "$store_sql" "$secs")
    tps_without=$(awk -v a="$tps_without1" -v b="$tps_without2" 'BEGIN { printf "%.1f", (a + b) / 2 }')
    echo "dlq_store without the worker: $(storage_int "$tps_without1") / $(storage_int "$tps_without2") tps (before / after)"
    echo "while the worker expires: $busy_exp tps over the $busy_exp_s s it was busy ($busy_exp_d s), ratio $(bench_ratio "$busy_exp" "$tps_without"); whole run $(storage_int "$tps_exp")"
    echo "while the worker purges: $busy_pur tps over the $busy_pur_s s it was busy ($busy_pur_d s), ratio $(bench_ratio "$busy_pur" "$tps_without"); whole run $(storage_int "$tps_pur")"
    bench_report "### Purge of closed messages, and dlq_store while the worker expires and purges" "" \
        "$n messages; dlq.batch_size = $batch; $interval_note for the purges only. (a) with the worker kept out (dlq.databases):" \
        "the messages stored by \`dlq_store\` expire (retention 1 s) by \`dlq.worker_expire\` batches, then go by" \
        "$how (resolved_retention 0), each call its own transaction, timed. (b) $n more expire and are" \
        "purged by the worker itself while 4 pgbench clients call \`dlq_store\` (another queue) for $secs s; a" \
        "poller of \`etl_status\` (every 0.2 s) finds when the worker was busy, and the tps of the pgbench seconds" \
        "overlapping that interval counts, against the mean of a run before and after without the worker." \
        "Goals: purge >= 1M msg/s; dlq_store >= 0.9x while the worker expires or purges." "" \
        "| measure | value | ratio |" "|---|---:|---:|" \
        "| expiry by direct worker_expire calls | $expire_rate msg/s | |" \
        "| purge by direct calls | $purge_rate msg/s ($purge_ms ms) | |" \
        "| dlq_store without the worker (before / after) | $(storage_int "$tps_without1") / $(storage_int "$tps_without2") tps | |" \
        "| dlq_store while the worker expires | $busy_exp tps ($busy_exp_s s of pgbench, worker busy $busy_exp_d s) | $(bench_ratio "$busy_exp" "$tps_without") |" \
        "| dlq_store while the worker purges | $busy_pur tps ($busy_pur_s s of pgbench, worker busy $busy_pur_d s) | $(bench_ratio "$busy_pur" "$tps_without") |" \
        "| whole $secs s runs with the worker let in: expiry / purge | $(storage_int "$tps_exp") / $(storage_int "$tps_pur") tps | $(bench_ratio "$tps_exp" "$tps_without") / $(bench_ratio "$tps_pur" "$tps_without") |" ""
    storage_cleanup
    storage_worker_in
    bench_psql -c "TRUNCATE dlq.messages, dlq.events" >/dev/null
fi

bench_psql -c "DROP SCHEMA bench_storage CASCADE" >/dev/null 2>&1 || true
