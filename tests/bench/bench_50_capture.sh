#!/usr/bin/env bash
# Failed-row capture: COPY of 200k rows (x BENCH_SCALE) with 1% and 10% bad
# rows (duplicate key, missing parent, NULL, CHECK failure in equal parts)
# into a table with a primary key, a foreign key, NOT NULL and a CHECK:
#   (a) dlq_capture        the table attached with dlq_attach (validate mode)
#   (b) PL/pgSQL EXCEPTION a BEFORE trigger on an intake table that does
#                          INSERT INTO target ... EXCEPTION WHEN OTHERS THEN
#                          INSERT INTO errors (one subtransaction per row)
#   (c) plain COPY         only the good rows, no trigger (the floor)
# and replay: dlq_reprocess_all of 100k captured rows (x BENCH_SCALE) whose
# parent was added afterwards, against a plain INSERT ... SELECT of the same
# rows from their payloads into a twin table.
# Each COPY runs ROUNDS times, alternating a, b, c; medians count.
# Goals (DESIGN.md section 6): (a) >= 2x (b), (a) >= 0.65x (c) at 10% bad;
# replay >= 0.5x INSERT ... SELECT.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

rows=$(bench_scaled 200000 1000)
replay_rows=$(bench_scaled 100000 1000)
rounds=${BENCH_ROUNDS:-3}
dir=$BENCH_DIR

bench_psql <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_cap CASCADE;
CREATE SCHEMA bench_cap;
CREATE TABLE bench_cap.parent (pid int PRIMARY KEY);
INSERT INTO bench_cap.parent SELECT generate_series(1, 1000);
-- One target per method, identical constraints.
CREATE TABLE bench_cap.t_a (id int PRIMARY KEY, pid int NOT NULL REFERENCES bench_cap.parent,
    qty int NOT NULL CHECK (qty > 0), sku text, note text);
CREATE TABLE bench_cap.t_b (LIKE bench_cap.t_a INCLUDING ALL);
ALTER TABLE bench_cap.t_b ADD FOREIGN KEY (pid) REFERENCES bench_cap.parent;
CREATE TABLE bench_cap.t_c (LIKE bench_cap.t_a INCLUDING ALL);
ALTER TABLE bench_cap.t_c ADD FOREIGN KEY (pid) REFERENCES bench_cap.parent;
SELECT dlq_attach('bench_cap.t_a', 'bench_cap');
-- (b): the hand-written alternative.
CREATE TABLE bench_cap.intake (LIKE bench_cap.t_a);
CREATE TABLE bench_cap.errors (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(),
    sqlstate text, error text, detail text, row_data jsonb);
CREATE FUNCTION bench_cap.intake_trg() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text;
BEGIN
    BEGIN
        INSERT INTO bench_cap.t_b VALUES (NEW.*);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
        INSERT INTO bench_cap.errors (sqlstate, error, detail, row_data)
        VALUES (st, msg, det, to_jsonb(NEW));
    END;
    RETURN NULL;
END
$$;
CREATE TRIGGER intake BEFORE INSERT ON bench_cap.intake FOR EACH ROW EXECUTE FUNCTION bench_cap.intake_trg();
SQL

# make_input PCT: all rows and good rows only, as CSV files in $dir.
make_input() {
    local pct=$1 every
    every=$(( 100 / pct ))
    bench_psql -v rows="$rows" -v every="$every" -v all="$dir/cap_all_$pct.csv" -v good="$dir/cap_good_$pct.csv" <<'SQL'
CREATE TEMP TABLE src AS
SELECT g, g % :every = 0 AS bad, (g / :every) % 4 AS kind FROM generate_series(1, :rows) g;
CREATE TEMP TABLE src_rows AS
SELECT CASE WHEN bad AND kind = 0 THEN g - 1 ELSE g END AS id,
       CASE WHEN bad AND kind = 1 THEN 1000000 ELSE g % 1000 + 1 END AS pid,
       CASE WHEN bad AND kind = 2 THEN NULL WHEN bad AND kind = 3 THEN -1 ELSE g % 7 + 1 END AS qty,
       'SKU-' || (g % 5000) AS sku, 'order line ' || g AS note, bad
  FROM src ORDER BY g;
COPY (SELECT id, pid, qty, sku, note FROM src_rows) TO :'all' WITH (FORMAT csv);
COPY (SELECT id, pid, qty, sku, note FROM src_rows WHERE NOT bad) TO :'good' WITH (FORMAT csv);
SQL
}

# timed_ms SQL...: wall time of the statements in one session, in ms.
timed_ms() {
    local start
    start=$(bench_now_ms)
    bench_psql "$@" >/dev/null
    bench_elapsed_ms "$start"
}

reset_all() {
    bench_psql -c "TRUNCATE bench_cap.t_a, bench_cap.t_b, bench_cap.t_c, bench_cap.errors" \
        -c "DELETE FROM dlq.messages WHERE queue = 'bench_cap'" -c "CHECKPOINT" >/dev/null
}

bench_report "## Failed-row capture (bench_50_capture.sh)" "" \
    "COPY of $rows rows into a table with PK, FK, NOT NULL and CHECK; medians of $rounds runs, rows/s of input rows." "" \
    "| bad rows | (a) dlq_capture | (b) PL/pgSQL EXCEPTION trigger | (c) plain COPY of good rows | (a)/(b) | (a)/(c) | XIDs used by (a) |" \
    "|---|---|---|---|---|---|---|"

for pct in 1 10; do
    make_input "$pct"
    ta=() tb=() tc=()
    xids=
    for ((r = 0; r < rounds; r++)); do
        reset_all
        x0=$(bench_psql -c "SELECT pg_current_xact_id()::text")
        ta+=("$(timed_ms -c "COPY bench_cap.t_a FROM '$dir/cap_all_$pct.csv' WITH (FORMAT csv)")")
        x1=$(bench_psql -c "SELECT pg_current_xact_id()::text")
        xids=$((x1 - x0 - 1))
        tb+=("$(timed_ms -c "COPY bench_cap.intake FROM '$dir/cap_all_$pct.csv' WITH (FORMAT csv)")")
        tc+=("$(timed_ms -c "COPY bench_cap.t_c FROM '$dir/cap_good_$pct.csv' WITH (FORMAT csv)")")
    done
    check=$(bench_psql -c "SELECT (SELECT count(*) FROM bench_cap.t_a) || ' loaded + ' ||
        (SELECT count(*) FROM dlq.messages WHERE queue = 'bench_cap') || ' captured; (b) ' ||
        (SELECT count(*) FROM bench_cap.t_b) || ' + ' || (SELECT count(*) FROM bench_cap.errors) ||
        '; (c) ' || (SELECT count(*) FROM bench_cap.t_c)")
    ma=$(bench_median "${ta[@]}"); mb=$(bench_median "${tb[@]}"); mc=$(bench_median "${tc[@]}")
    ra=$(awk -v n="$rows" -v ms="$ma" 'BEGIN { printf "%d", n / (ms / 1000) }')
    rb=$(awk -v n="$rows" -v ms="$mb" 'BEGIN { printf "%d", n / (ms / 1000) }')
    rc=$(awk -v n="$rows" -v ms="$mc" 'BEGIN { printf "%d", n / (ms / 1000) }')
    echo "capture ${pct}% bad: (a) ${ma} ms ${ra} rows/s, (b) ${mb} ms ${rb} rows/s, (c) ${mc} ms ${rc} rows/s;" \
        "(a)/(b) $(bench_ratio "$rb" "$ra" | awk '{ printf "%.2f", 1 / $1 }')x, (a)/(c) $(bench_ratio "$ra" "$rc")x;" \
        "XIDs used by (a): $xids; [$check]; runs a: ${ta[*]} b: ${tb[*]} c: ${tc[*]}"
    bench_report "| ${pct}% | $ra rows/s | $rb rows/s | $rc rows/s | $(bench_ratio "$ra" "$rb")x | $(bench_ratio "$ra" "$rc")x | $xids |"
done

# Replay: rows captured for a missing parent, then the parent is added.
bench_psql -v n="$replay_rows" -v f="$dir/cap_replay.csv" <<'SQL' >/dev/null
SET client_min_messages = warning;
COPY (SELECT g AS id, 5000 AS pid, g % 7 + 1 AS qty, 'SKU-' || (g % 5000) AS sku, 'order line ' || g AS note
        FROM generate_series(1, :n) g) TO :'f' WITH (FORMAT csv);
CREATE TABLE bench_cap.t_r (LIKE bench_cap.t_a INCLUDING ALL);
ALTER TABLE bench_cap.t_r ADD FOREIGN KEY (pid) REFERENCES bench_cap.parent;
SQL
trep=() tins=()
for ((r = 0; r < rounds; r++)); do
    reset_all
    bench_psql -c "TRUNCATE bench_cap.t_r" -c "DELETE FROM bench_cap.parent WHERE pid = 5000" \
        -c "COPY bench_cap.t_a FROM '$dir/cap_replay.csv' WITH (FORMAT csv)" \
        -c "INSERT INTO bench_cap.parent VALUES (5000)" -c "VACUUM ANALYZE dlq.messages" -c "CHECKPOINT" >/dev/null
    trep+=("$(timed_ms -c "SELECT dlq_reprocess_all('bench_cap')")")
    tins+=("$(timed_ms -c "INSERT INTO bench_cap.t_r SELECT r.* FROM dlq.messages m,
        jsonb_populate_record(NULL::bench_cap.t_r, m.payload) r WHERE m.queue = 'bench_cap'")")
done
check=$(bench_psql -c "SELECT (SELECT count(*) FROM bench_cap.t_a) || ' replayed rows in the table, ' ||
    (SELECT count(*) FROM dlq.messages WHERE queue = 'bench_cap' AND status = 'resolved') || ' resolved; baseline ' ||
    (SELECT count(*) FROM bench_cap.t_r)")
mrep=$(bench_median "${trep[@]}"); mins=$(bench_median "${tins[@]}")
rrep=$(awk -v n="$replay_rows" -v ms="$mrep" 'BEGIN { printf "%d", n / (ms / 1000) }')
rins=$(awk -v n="$replay_rows" -v ms="$mins" 'BEGIN { printf "%d", n / (ms / 1000) }')
echo "replay of $replay_rows captured rows: dlq_reprocess_all ${mrep} ms ${rrep} rows/s," \
    "INSERT ... SELECT ${mins} ms ${rins} rows/s, ratio $(bench_ratio "$rrep" "$rins")x [$check];" \
    "runs: ${trep[*]} / ${tins[*]}"
bench_report "" "| replay of $replay_rows captured rows | dlq_reprocess_all | INSERT ... SELECT from the payloads | ratio |" \
    "|---|---|---|---|" "| | $rrep rows/s | $rins rows/s | $(bench_ratio "$rrep" "$rins")x |" ""

bench_psql -c "SELECT dlq_detach('bench_cap.t_a')" -c "DELETE FROM dlq.messages WHERE queue = 'bench_cap'" \
    -c "DROP SCHEMA bench_cap CASCADE" >/dev/null
