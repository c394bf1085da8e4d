# Shared helpers for tests/bench/bench_*.sh (sourced, not run).
#
# run.sh exports PGHOST, PGPORT, PGDATABASE=bench, PGUSER, PG_BIN,
# BENCH_SCALE, BENCH_REPORT and BENCH_DIR (a scratch directory the server
# can read).  A bench script measures a baseline and the subject side by
# side, prints its figures and appends a markdown section to $BENCH_REPORT.

: "${PG_BIN:?run tests/bench/run.sh, or export PG_BIN and friends yourself}"
: "${BENCH_SCALE:=1}"
: "${BENCH_REPORT:=/dev/null}"
: "${BENCH_DIR:=$(mktemp -d)}"

# bench_psql ARGS...: psql without psqlrc, stopping on the first error,
# unaligned tuples only.
bench_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"
}

# bench_scaled N [MIN]: N * BENCH_SCALE rounded, at least MIN (default 1).
bench_scaled() {
    awk -v n="$1" -v s="$BENCH_SCALE" -v m="${2:-1}" \
        'BEGIN { v = int(n * s + 0.5); if (v < m) v = m; print v }'
}

# bench_seconds N: a duration of N seconds scaled, at least 2.
bench_seconds() {
    bench_scaled "$1" 2
}

# bench_script NAME: a file in BENCH_DIR for a pgbench script, read from stdin.
bench_script() {
    local f="$BENCH_DIR/$1.sql"
    cat >"$f"
    echo "$f"
}

# bench_pgbench LOG ARGS...: pgbench -n (no vacuum of its own tables) with
# ARGS; the whole output goes to LOG.  Fails, showing the log, when pgbench
# fails or any transaction failed.
bench_pgbench() {
    local log=$1
    shift
    if ! "$PG_BIN/pgbench" -n "$@" >"$log" 2>&1; then
        echo "pgbench failed:" >&2
        tail -20 "$log" >&2
        return 1
    fi
    if grep -qE '^number of failed transactions: [1-9]' "$log"; then
        echo "pgbench: some transactions failed:" >&2
        tail -20 "$log" >&2
        return 1
    fi
}

# bench_tps SCRIPT SECONDS [CLIENTS] [PGBENCH-ARGS...]: transactions per
# second of SCRIPT run by CLIENTS (default 4) connections with prepared
# statements for SECONDS.
bench_tps() {
    local script=$1 secs=$2 clients=${3:-4}
    shift 3 2>/dev/null || shift $#
    local log="$BENCH_DIR/pgbench.log"
    bench_pgbench "$log" -M prepared -c "$clients" -j "$(( clients < 2 ? clients : 2 ))" \
        -T "$secs" -f "$script" "$@" || return 1
    sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\)$/\1/p' "$log"
}

# bench_latency SCRIPT SECONDS [PGBENCH-ARGS...]: average latency in ms of
# SCRIPT run by one connection with prepared statements for SECONDS.
bench_latency() {
    local script=$1 secs=$2
    shift 2
    local log="$BENCH_DIR/pgbench.log"
    bench_pgbench "$log" -M prepared -c 1 -T "$secs" -f "$script" "$@" || return 1
    sed -nE 's/^latency average = ([0-9.]+) ms$/\1/p' "$log"
}

# bench_median VALUES...: the median (mean of the middle two for an even count).
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) exit 1;
              if (NR % 2) print v[(NR + 1) / 2];
              else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_ratio A B: A / B with two decimals.
bench_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

# bench_alternate ROUNDS CMD-A CMD-B: runs A, B, A, B, ... ROUNDS times each
# (so slow drift, such as a table growing, hits both sides alike) and prints
# "median-of-A median-of-B" followed by every figure in run order.  Each CMD is
# a string evaluated in the shell that prints one number.
bench_alternate() {
    local rounds=$1 a=$2 b=$3 va=() vb=() x all=()
    for ((i = 0; i < rounds; i++)); do
        x=$(eval "$a") && [ -n "$x" ] || return 1
        va+=("$x")
        all+=("$x")
        x=$(eval "$b") && [ -n "$x" ] || return 1
        vb+=("$x")
        all+=("$x")
    done
    echo "$(bench_median "${va[@]}") $(bench_median "${vb[@]}") ${all[*]}"
}

# bench_now_ms: a wall clock in milliseconds; with bench_elapsed_ms START
# it makes a timer.
bench_now_ms() {
    echo $(($(date +%s%N) / 1000000))
}
bench_elapsed_ms() {
    echo $(($(bench_now_ms) - $1))
}

# bench_report LINE...: append lines to the markdown report.
bench_report() {
    printf '%s\n' "$@" >>"$BENCH_REPORT"
}
