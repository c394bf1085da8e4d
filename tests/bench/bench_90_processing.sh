#!/usr/bin/env bash
# Processing inside the database (issue 14, DESIGN 7.3).
#
# (a) Handler replay: 100k messages (x BENCH_SCALE), 1% of them failing, in a
#     queue whose replay_handler is bench_proc.bench_handler(jsonb), a PL/pgSQL
#     function that raises for {"fail": true} and otherwise inserts one row
#     into bench_proc.processed (primary key on order_id).
#       subject:  dlq_reprocess_all(queue)
#       baseline: what a hand-written DLQ (or PgQue's dlq_replay_all) does, on
#                 a lookalike table (LIKE dlq.messages INCLUDING ALL) with
#                 the same rows: a PL/pgSQL loop over the pending messages,
#                 1000 at a time locked FOR UPDATE, one BEGIN ... EXCEPTION
#                 block per message around the same handler; a failure is
#                 recorded on its message in the EXCEPTION clause, the
#                 successes are resolved with one UPDATE per 1000.  Twice:
#                 as a function (one transaction, like dlq_reprocess_all)
#                 and as a procedure that commits every 1000 (a transaction
#                 with 100k subtransactions gets slower as it goes).
#     Goals: subject >= 3x the faster baseline's messages/s; XIDs consumed <= 5% of
#     the messages (the baseline uses one per message: each EXCEPTION block
#     that writes gets a subtransaction XID).
# (b) Table replay of captured rows: 100k rows (x BENCH_SCALE) captured from a
#     COPY into a table attached with dlq_attach (their parent row missing:
#     a foreign key), the parent added, then
#       subject:  dlq_reprocess_all(queue) re-applies them to the table
#       baseline: INSERT INTO twin SELECT r.* FROM dlq.messages m,
#                 jsonb_populate_record(NULL::twin, m.payload) r (the same
#                 payloads into an identical table)
#     then again with 1% of the rows refused by a BEFORE trigger (which the
#     capture's prediction cannot see), against the same INSERT ... SELECT of
#     the 99% that pass (with the trigger on the twin too) and against a
#     PL/pgSQL loop with one EXCEPTION block per row.  Goal: >= 0.5x the
#     INSERT ... SELECT.
#
# Every side's result is checked before its time counts (messages resolved
# and failed, rows in the tables, the handler's side effects).  Subject and
# baseline alternate, ROUNDS times each; medians count.  The subject's parts
# that the installed dlq cannot do yet (no replay_handler, a trigger's error
# aborting a table replay) are probed first on a small queue and reported as
# such; the baselines still run.  BENCH_PROC_PARTS picks parts (default
# "handler table").
set -uo pipefail
. "$(dirname "$0")/lib.sh"

rows=$(bench_scaled "${BENCH_PROC_ROWS:-100000}" 1000)
trows=$(bench_scaled "${BENCH_PROC_TABLE_ROWS:-100000}" 1000)
rounds=${BENCH_ROUNDS:-3}
hq=bench_proc_h
tq=bench_proc_t
dir=$BENCH_DIR
parts=" ${BENCH_PROC_PARTS:-handler table} "

# Setup. --------------------------------------------------------------------
bench_psql -v rows="$rows" <<'SQL' || exit 1
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_proc CASCADE;
CREATE SCHEMA bench_proc;
-- The messages: order events, every 100th one refused by the handler.
CREATE TABLE bench_proc.src AS
SELECT g AS n, g % 100 = 0 AS fail,
       jsonb_build_object('order_id', g, 'sku', 'SKU-' || (g % 5000), 'qty', g % 7 + 1,
                          'price', round((g % 997) / 10.0, 2))
       || CASE WHEN g % 100 = 0 THEN '{"fail": true}'::jsonb ELSE '{}'::jsonb END AS payload
  FROM generate_series(1, :rows) g;
-- The handler's side effect.
CREATE TABLE bench_proc.processed (order_id bigint PRIMARY KEY, sku text NOT NULL, amount numeric NOT NULL);
CREATE FUNCTION bench_proc.bench_handler(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p ? 'fail' THEN
        RAISE EXCEPTION 'order % refused', p ->> 'order_id' USING ERRCODE = '22023';
    END IF;
    INSERT INTO bench_proc.processed
    VALUES ((p ->> 'order_id')::bigint, p ->> 'sku', (p ->> 'qty')::int * (p ->> 'price')::numeric);
END
$$;
-- The baseline's dead letters: the shape of dlq's live partition.
CREATE TABLE bench_proc.dead_letters (LIKE dlq.messages INCLUDING ALL);
-- One batch: the next 1000 pending messages after last_id, locked, one
-- EXCEPTION block per message; returns the last id done, NULL when none was left.
CREATE FUNCTION bench_proc.replay_batch(q text, last_id bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    m record;
    ok bigint[] := '{}';
    got bigint;
    st text;
    msg text;
BEGIN
    FOR m IN SELECT message_id, payload FROM bench_proc.dead_letters
              WHERE queue = q AND status = 'pending' AND message_id > last_id
              ORDER BY message_id LIMIT 1000 FOR UPDATE
    LOOP
        got := m.message_id;
        BEGIN
            PERFORM bench_proc.bench_handler(m.payload);
            ok := ok || m.message_id;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            UPDATE bench_proc.dead_letters
               SET attempts = attempts + 1, error = msg, sqlstate = st, last_failed_at = now(),
                   status = CASE WHEN attempts + 1 >= max_attempts THEN 'review'::dlq.status ELSE 'pending' END
             WHERE message_id = m.message_id;
        END;
    END LOOP;
    UPDATE bench_proc.dead_letters SET status = 'resolved', resolved_at = now(), attempts = attempts + 1
     WHERE message_id = ANY (ok);
    RETURN got;
END
$$;
-- Every batch in one transaction, as a function (dlq_reprocess_all is one too) ...
CREATE FUNCTION bench_proc.replay_all_plpgsql(q text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    last_id bigint := 0;
BEGIN
    LOOP
        last_id := bench_proc.replay_batch(q, last_id);
        EXIT WHEN last_id IS NULL;
    END LOOP;
END
$$;
-- ... and as a procedure committing each batch.
CREATE PROCEDURE bench_proc.replay_all_batched(q text) LANGUAGE plpgsql AS $$
DECLARE
    last_id bigint := 0;
BEGIN
    LOOP
        last_id := bench_proc.replay_batch(q, last_id);
        EXIT WHEN last_id IS NULL;
        COMMIT;
    END LOOP;
END
$$;
-- (b): order lines whose order (parent) arrives late.
CREATE TABLE bench_proc.parent (pid int PRIMARY KEY);
INSERT INTO bench_proc.parent SELECT generate_series(1, 1000);
CREATE TABLE bench_proc.lines (id int PRIMARY KEY, pid int NOT NULL REFERENCES bench_proc.parent,
    qty int NOT NULL CHECK (qty > 0), sku text, note text);
CREATE TABLE bench_proc.lines_b (LIKE bench_proc.lines INCLUDING ALL);
ALTER TABLE bench_proc.lines_b ADD FOREIGN KEY (pid) REFERENCES bench_proc.parent;
-- The error the prediction cannot see: a BEFORE trigger (created per round).
CREATE FUNCTION bench_proc.guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id % 100 = 0 THEN
        RAISE EXCEPTION 'line % on hold', NEW.id USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END
$$;
CREATE FUNCTION bench_proc.insert_rows_plpgsql(q text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    m record;
    nok bigint := 0;
    nfail bigint := 0;
BEGIN
    FOR m IN SELECT payload FROM dlq.messages WHERE queue = q ORDER BY message_id LOOP
        BEGIN
            INSERT INTO bench_proc.lines_b SELECT * FROM jsonb_populate_record(NULL::bench_proc.lines_b, m.payload);
            nok := nok + 1;
        EXCEPTION WHEN OTHERS THEN
            nfail := nfail + 1;
        END;
    END LOOP;
    RETURN jsonb_build_object('inserted', nok, 'failed', nfail);
END
$$;
SQL

# Small helpers. -------------------------------------------------------------
timed_ms() {
    local start
    start=$(bench_now_ms)
    bench_psql "$@" >/dev/null || return 1
    bench_elapsed_ms "$start"
}
xid_now() {
    bench_psql -c "SELECT pg_current_xact_id()::text"
}
# per_s N MS: N items in MS milliseconds, per second.
per_s() {
    awk -v n="$1" -v ms="$2" 'BEGIN { printf "%d\n", n * 1000 / (ms > 0 ? ms : 1) }'
}
# pct A B: A as a percentage of B, one decimal.
pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", 100 * a / b }'
}
fails=$(bench_psql -c "SELECT count(*) FROM bench_proc.src WHERE fail")

bench_report "## Processing inside the database (bench_90_processing.sh)" ""

# (a) Handler replay. ---------------------------------------------------------
if [[ $parts == *" handler "* ]]; then
has_handler=$(bench_psql -c "SELECT count(*) FROM pg_proc WHERE proname = 'dlq_configure'
    AND 'replay_handler' = ANY (proargnames)")

# load_messages QUEUE TABLE: the source rows as pending messages.
load_messages() {
    bench_psql -c "DELETE FROM $2 WHERE queue = '$1'" -c "
        INSERT INTO $2 (queue, component, payload, error, sqlstate, error_class, max_attempts, expires_at)
        SELECT '$1', 'orders', payload, 'canceling statement due to statement timeout', '57014',
               'transient', 1000, now() + interval '30 days'
          FROM bench_proc.src ORDER BY n" >/dev/null
}
reset_handler() {
    bench_psql -c "TRUNCATE bench_proc.processed" >/dev/null
    load_messages "$hq" dlq.messages
    load_messages "$hq" bench_proc.dead_letters
    bench_psql -c "VACUUM ANALYZE dlq.messages" -c "VACUUM ANALYZE bench_proc.dead_letters" \
        -c "VACUUM ANALYZE bench_proc.processed" -c "CHECKPOINT" >/dev/null
}
# check_handler TABLE: the outcome of a replay of the source rows: every
# message resolved once but the failing ones, pending with one attempt and the
# handler's error; the side effects of exactly the successes.
check_handler() {
    bench_psql -v t="$1" -v q="$hq" <<'SQL'
SELECT CASE WHEN ok = good AND failed = bad AND total = good + bad AND done = good AND done_ok = good
            THEN 'ok' ELSE format('wrong: %s resolved, %s failed, %s messages; %s side effects, %s of them right',
                                  ok, failed, total, done, done_ok) END
  FROM (SELECT count(*) FILTER (WHERE NOT fail) AS good, count(*) FILTER (WHERE fail) AS bad
          FROM bench_proc.src) s,
       (SELECT count(*) FILTER (WHERE status = 'resolved' AND attempts = 1 AND NOT payload ? 'fail') AS ok,
               count(*) FILTER (WHERE status = 'pending' AND attempts = 1 AND payload ? 'fail'
                                  AND sqlstate = '22023' AND error LIKE 'order % refused') AS failed,
               count(*) AS total
          FROM :t WHERE queue = :'q') m,
       (SELECT count(*) AS done, count(*) FILTER (WHERE NOT s.fail) AS done_ok
          FROM bench_proc.processed p JOIN bench_proc.src s ON s.n = p.order_id) p
SQL
}

# The subject can run only when the installed dlq replays through handlers:
# probe it on 200 messages first.
handler_ok=0
if [ "$has_handler" = 1 ]; then
    probe=$(bench_psql 2>&1 <<'SQL'
SET client_min_messages = warning;
SELECT (dlq_configure('bench_proc_probe', require_listener => false, max_attempts => 1000,
        replay_handler => 'bench_proc.bench_handler(jsonb)'::regprocedure)).queue IS NOT NULL AS ok \gset
SELECT count(dlq_store('bench_proc_probe', jsonb_build_object('order_id', -g, 'sku', 'probe', 'qty', 1, 'price', 1) ||
       CASE WHEN g % 100 = 0 THEN '{"fail": true}'::jsonb ELSE '{}'::jsonb END, 'probe')) AS stored
  FROM generate_series(1, 200) g \gset
SELECT dlq_reprocess_all('bench_proc_probe') AS r \gset
SELECT count(*) FILTER (WHERE status = 'resolved') || ' resolved, ' ||
       count(*) FILTER (WHERE status = 'pending' AND sqlstate = '22023') || ' failed; processed ' ||
       (SELECT count(*) FROM bench_proc.processed WHERE order_id < 0)
  FROM dlq.messages WHERE queue = 'bench_proc_probe';
DELETE FROM bench_proc.processed WHERE order_id < 0;
SQL
)
    if [ "$probe" = "198 resolved, 2 failed; processed 198" ]; then
        handler_ok=1
    fi
    echo "handler replay probe (200 messages, 2 failing): $probe"
    bench_psql -c "SELECT (dlq_configure('$hq', require_listener => false, max_attempts => 1000,
        replay_handler => 'bench_proc.bench_handler(jsonb)'::regprocedure)).queue" >/dev/null || handler_ok=0
else
    echo "dlq_configure has no replay_handler: the subject of (a) is not measured"
fi

# handler_run KIND: messages/s of one replay of the loaded messages by KIND:
# subject (dlq_reprocess_all), function (the PL/pgSQL loop in one
# transaction) or procedure (the same, committing every batch); the figure
# and the XIDs it consumed go to $dir/{rate,xids}_KIND.txt.
handler_run() {
    local x0 x1 ms res sql=" SELECT dlq_reprocess_all('$hq')" t=dlq.messages rate
    case $1 in
        function) sql="SELECT bench_proc.replay_all_plpgsql('$hq')" t=bench_proc.dead_letters ;;
        procedure) sql="CALL bench_proc.replay_all_batched('$hq')" t=bench_proc.dead_letters ;;
    esac
    reset_handler
    x0=$(xid_now)
    ms=$(timed_ms -c "$sql") || return 1
    x1=$(xid_now)
    res=$(check_handler "$t")
    [ "$res" = ok ] || { echo "$1: $res" >&2; return 1; }
    rate=$(per_s "$rows" "$ms")
    echo $((x1 - x0 - 1)) >>"$dir/xids_$1.txt"
    echo "$rate" >>"$dir/rate_$1.txt"
    echo "$rate"
}

# One unmeasured cycle per side first: a replay leaves its table with the
# free space of the versions it replaced, as a queue in use has (measured:
# the first replay of the baseline into a freshly packed table is 2-4 times
# slower than every later one).  Then the sides alternate.
kinds="function procedure"
[ "$handler_ok" = 1 ] && kinds="$kinds subject"
echo "(a) handler replay: $rows messages, $fails failing; one warm-up, then $rounds rounds per side, alternating ($kinds)"
for k in $kinds; do
    handler_run "$k" >/dev/null || exit 1
done
rm -f "$dir"/xids_*.txt "$dir"/rate_*.txt
all=()
for ((r = 0; r < rounds; r++)); do
    for k in $kinds; do
        x=$(handler_run "$k") && [ -n "$x" ] || exit 1
        all+=("$x")
    done
done
# median KIND FIGURE: the median of one side's figures, n/a when it did not run.
median() {
    # shellcheck disable=SC2046
    [ -s "$dir/$2_$1.txt" ] && bench_median $(cat "$dir/$2_$1.txt") || echo n/a
}
hfun=$(median function rate) hproc=$(median procedure rate) hsubj=$(median subject rate)
xfun=$(median function xids) xproc=$(median procedure xids) xsubj=$(median subject xids)
hbest=$(printf '%s\n' "$hfun" "$hproc" | sort -g | tail -1)
if [ "$handler_ok" = 1 ]; then
    hratio=$(bench_ratio "$hsubj" "$hbest") hratio_fun=$(bench_ratio "$hsubj" "$hfun")
    xsubjp=$(pct "$xsubj" "$rows")
else
    hratio=n/a hratio_fun=n/a xsubjp=n/a
fi
echo "dlq_reprocess_all through the handler: $hsubj messages/s, $xsubj XIDs ($xsubjp% of the messages)"
echo "PL/pgSQL loop, one EXCEPTION block per message, one transaction: $hfun messages/s, $xfun XIDs ($(pct "$xfun" "$rows")%)"
echo "the same loop as a procedure committing every 1000: $hproc messages/s, $xproc XIDs ($(pct "$xproc" "$rows")%)"
echo "ratio to the faster baseline: $hratio (goal >= 3); to the one-transaction loop: $hratio_fun"
echo "runs ($kinds, ...): ${all[*]}"

bench_report \
    "(a) Replay of $rows messages, $fails of them (1%) failing, through a PL/pgSQL handler that raises for" \
    "the failing ones and otherwise inserts one row (primary key) into a table. Subject: \`dlq_reprocess_all\`" \
    "on a queue with \`replay_handler\`. Baseline: a PL/pgSQL loop over the same messages in a lookalike table," \
    "1000 locked at a time, one \`BEGIN ... EXCEPTION\` block per message calling the same handler, the failure" \
    "recorded on its message, the successes resolved by one UPDATE per 1000; as a function (one transaction)" \
    "and as a procedure that commits every 1000. One warm-up run each, then $rounds rounds per side" \
    "alternating, medians. XIDs: \`pg_current_xact_id()\` before and after, in separate transactions." \
    "" \
    "| measure | dlq_reprocess_all | EXCEPTION loop, one transaction | EXCEPTION loop, COMMIT per 1000 | ratio to the faster (goal) |" \
    "|---|---|---|---|---|" \
    "| messages/s | $hsubj | $hfun | $hproc | $hratio (≥ 3) |" \
    "| XIDs consumed (% of the messages) | $xsubj ($xsubjp%) | $xfun ($(pct "$xfun" "$rows")%) | $xproc ($(pct "$xproc" "$rows")%) | (≤ 5%) |" \
    "" \
    "Runs ($kinds, ...): ${all[*]}" \
    ""

fi

# (b) Table replay of captured rows. -----------------------------------------
if [[ $parts == *" table "* ]]; then
bench_psql -v n="$trows" -v f="$dir/proc_lines.csv" -v q="$tq" <<'SQL' >/dev/null || exit 1
SET client_min_messages = warning;
COPY (SELECT g AS id, 5000 AS pid, g % 7 + 1 AS qty, 'SKU-' || (g % 5000) AS sku, 'order line ' || g AS note
        FROM generate_series(1, :n) g) TO :'f' WITH (FORMAT csv);
SELECT dlq_attach('bench_proc.lines', :'q');
SELECT (dlq_configure(:'q', max_attempts => 1000)).queue;
SQL
tfail=$((trows / 100))

# capture_rows GUARD: an empty table and twin, the rows captured again (their
# parent missing), the parent added; with GUARD=1 the BEFORE trigger on both.
capture_rows() {
    bench_psql -c "SET client_min_messages = warning" -c "DROP TRIGGER IF EXISTS guard ON bench_proc.lines" \
        -c "DROP TRIGGER IF EXISTS guard ON bench_proc.lines_b" \
        -c "TRUNCATE bench_proc.lines, bench_proc.lines_b" \
        -c "DELETE FROM dlq.messages WHERE queue = '$tq'" \
        -c "DELETE FROM bench_proc.parent WHERE pid = 5000" \
        -c "COPY bench_proc.lines FROM '$dir/proc_lines.csv' WITH (FORMAT csv)" \
        -c "INSERT INTO bench_proc.parent VALUES (5000)" >/dev/null || return 1
    if [ "$1" = 1 ]; then
        bench_psql -c "CREATE TRIGGER guard BEFORE INSERT ON bench_proc.lines
                FOR EACH ROW EXECUTE FUNCTION bench_proc.guard()" \
            -c "CREATE TRIGGER guard BEFORE INSERT ON bench_proc.lines_b
                FOR EACH ROW EXECUTE FUNCTION bench_proc.guard()" >/dev/null || return 1
    fi
    bench_psql -c "VACUUM ANALYZE dlq.messages" -c "VACUUM ANALYZE bench_proc.lines" \
        -c "VACUUM ANALYZE bench_proc.lines_b" -c "CHECKPOINT" >/dev/null
    local got
    got=$(bench_psql -c "SELECT count(*) FROM dlq.messages WHERE queue = '$tq' AND status = 'pending'")
    [ "$got" = "$trows" ] || { echo "captured $got of $trows rows" >&2; return 1; }
}
# check_table GUARD: dlq's table and messages after the subject, or (with
# "twin") the twin after a baseline.
check_table() {
    local guard=$1 side=${2:-subject} want=$trows
    [ "$guard" = 1 ] && want=$((trows - tfail))
    if [ "$side" = twin ]; then
        bench_psql -c "SELECT CASE WHEN count(*) = $want THEN 'ok' ELSE count(*) || ' rows in the twin' END
            FROM bench_proc.lines_b"
        return
    fi
    bench_psql -c "SELECT CASE WHEN (SELECT count(*) FROM bench_proc.lines) = $want
            AND count(*) FILTER (WHERE status = 'resolved' AND attempts = 1) = $want
            AND count(*) FILTER (WHERE status = 'pending' AND attempts = 1 AND sqlstate = '23514'
                                   AND (payload ->> 'id')::int % 100 = 0) = $trows - $want
            THEN 'ok' ELSE (SELECT count(*) FROM bench_proc.lines) || ' rows in the table; messages: ' ||
                string_agg(DISTINCT status::text, ',') END
        FROM dlq.messages WHERE queue = '$tq'"
}
rm -f "$dir"/txids_*.txt
# table_subject GUARD / table_baseline GUARD [loop]: rows/s of one replay.
table_subject() {
    local x0 x1 ms res
    capture_rows "$1" || return 1
    x0=$(xid_now)
    ms=$(timed_ms -c "SELECT dlq_reprocess_all('$tq')") || return 1
    x1=$(xid_now)
    res=$(check_table "$1")
    [ "$res" = ok ] || { echo "table replay: $res" >&2; return 1; }
    echo $((x1 - x0 - 1)) >>"$dir/txids_subject_$1.txt"
    per_s "$trows" "$ms"
}
table_baseline() {
    local x0 x1 ms res sql
    capture_rows "$1" || return 1
    sql="INSERT INTO bench_proc.lines_b SELECT r.* FROM dlq.messages m,
        jsonb_populate_record(NULL::bench_proc.lines_b, m.payload) r WHERE m.queue = '$tq'"
    [ "$1" = 1 ] && sql="$sql AND (m.payload ->> 'id')::int % 100 <> 0"
    [ "${2:-}" = loop ] && sql="SELECT bench_proc.insert_rows_plpgsql('$tq')"
    x0=$(xid_now)
    ms=$(timed_ms -c "$sql") || return 1
    x1=$(xid_now)
    res=$(check_table "$1" twin)
    [ "$res" = ok ] || { echo "table baseline: $res" >&2; return 1; }
    echo $((x1 - x0 - 1)) >>"$dir/txids_${2:-insert}_$1.txt"
    per_s "$trows" "$ms"
}
table_loop() {
    table_baseline "$1" loop
}

bench_report "(b) Replay of $trows rows captured from a COPY (their parent row missing), after the parent was added." \
    "Subject: \`dlq_reprocess_all\`. Baseline: \`INSERT ... SELECT\` from the same payloads" \
    "(\`jsonb_populate_record\`) into an identical table; with 1% refused by a BEFORE trigger, the baseline" \
    "inserts the 99% that pass (the trigger on its table too), and a PL/pgSQL loop with one EXCEPTION block" \
    "per row is shown for context. Rows/s count every row offered. $rounds rounds per side alternating, medians." \
    "" \
    "| rows failing | dlq_reprocess_all rows/s | INSERT ... SELECT rows/s | ratio (goal ≥ 0.5) | EXCEPTION loop rows/s | XIDs: dlq / INSERT / loop |" \
    "|---|---|---|---|---|---|"

for guard in 0 1; do
    label="none"
    [ "$guard" = 1 ] && label="1% (BEFORE trigger)"
    subject_ok=1
    if [ "$guard" = 1 ]; then
        # Does the installed dlq catch a trigger's error per row?
        capture_rows 1 || exit 1
        if ! err=$(bench_psql -c "SELECT dlq_reprocess_all('$tq')" 2>&1 >/dev/null) ||
            [ "$(check_table 1)" != ok ]; then
            subject_ok=0
            echo "table replay with a trigger refusing 1%: not caught per row by this dlq (${err:-wrong outcome: $(check_table 1)})"
        fi
    fi
    if [ "$subject_ok" = 1 ]; then
        figures=$(bench_alternate "$rounds" "table_baseline $guard" "table_subject $guard") || exit 1
        read -r tbase tsubj tall <<<"$figures"
        # shellcheck disable=SC2046
        tsx=$(bench_median $(cat "$dir/txids_subject_$guard.txt"))
        tratio=$(bench_ratio "$tsubj" "$tbase")
    else
        vb=()
        for ((r = 0; r < rounds; r++)); do
            x=$(table_baseline "$guard") && [ -n "$x" ] || exit 1
            vb+=("$x")
        done
        tbase=$(bench_median "${vb[@]}")
        tsubj="n/a (aborts)" tsx=n/a tratio=n/a tall="${vb[*]}"
    fi
    # shellcheck disable=SC2046
    tbx=$(bench_median $(cat "$dir/txids_insert_$guard.txt"))
    tloop=n/a tlx=n/a
    if [ "$guard" = 1 ]; then
        vl=()
        for ((r = 0; r < rounds; r++)); do
            x=$(table_loop 1) && [ -n "$x" ] || exit 1
            vl+=("$x")
        done
        tloop=$(bench_median "${vl[@]}")
        # shellcheck disable=SC2046
        tlx=$(bench_median $(cat "$dir/txids_loop_1.txt"))
        tall="$tall; loop: ${vl[*]}"
    fi
    echo "(b) table replay of $trows captured rows, failing: $label: dlq_reprocess_all $tsubj rows/s ($tsx XIDs)," \
        "INSERT ... SELECT $tbase rows/s ($tbx XIDs), ratio $tratio (goal >= 0.5); EXCEPTION loop $tloop rows/s" \
        "($tlx XIDs); runs (baseline, subject, ...): $tall"
    bench_report "| $label | $tsubj | $tbase | $tratio | $tloop | $tsx / $tbx / $tlx |"
done
bench_report ""

fi

# Leave nothing behind for later scripts.
bench_psql -c "SET client_min_messages = warning" -c "SELECT dlq_detach('bench_proc.lines')" \
    -c "DELETE FROM dlq.messages WHERE queue IN ('$hq', '$tq', 'bench_proc_probe')" \
    -c "DROP SCHEMA bench_proc CASCADE" >/dev/null || true
