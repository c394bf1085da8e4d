#!/usr/bin/env bash
# `make bench`: build and install dlq, start a throwaway cluster that
# preloads it, create database "bench" with the extension, run every
# tests/bench/bench_*.sh in name order against it, print the report and stop
# the cluster.  Works as root (PostgreSQL then runs as the postgres OS user)
# or as a normal user.  Not pass/fail: a failing script is reported and the
# others still run.
#
#   make bench                      full size (BENCH_SCALE=1)
#   make bench BENCH_SCALE=0.1      a quick run: 10% of the rows and durations
#   make bench BENCH_ONLY=20_list   only the scripts whose name contains this
#
# Settings that decide fairness (durability, autovacuum, planner costs) are
# PostgreSQL's defaults and identical for the baseline and the subject of
# every benchmark; only memory and checkpoint spacing are raised, see
# tests/bench/README.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. scripts/common.sh

export BENCH_SCALE=${BENCH_SCALE:-1}
if ! awk -v s="$BENCH_SCALE" 'BEGIN { exit !(s + 0 > 0) }'; then
    echo "BENCH_SCALE must be a positive number, not \"$BENCH_SCALE\"" >&2
    exit 2
fi

dlq_ensure_deps || { echo "could not install dependencies" >&2; exit 1; }
if ! dlq_build_install; then
    echo "could not build and install dlq" >&2
    exit 1
fi
export PG_BIN
[ -x "$PG_BIN/pgbench" ] || { echo "pgbench not found in $PG_BIN" >&2; exit 1; }

# The cluster lives where its OS user can write: the working tree, or a
# fresh directory under /tmp owned by postgres when we are root.
if [ "$(id -u)" -eq 0 ]; then
    BENCH_DIR=$(mktemp -d /tmp/dlq-bench.XXXXXX)
    chown postgres "$BENCH_DIR"
    export PGUSER=postgres
else
    rm -rf "$root/tmp_bench"
    mkdir -p "$root/tmp_bench"
    BENCH_DIR="$root/tmp_bench"
    export PGUSER=$(id -un)
fi
chmod 755 "$BENCH_DIR"
export BENCH_DIR
data="$BENCH_DIR/data"
export BENCH_REPORT="$BENCH_DIR/report.md"
: >"$BENCH_REPORT"
chmod 666 "$BENCH_REPORT"

# Only the unix socket in our own directory, so the port need not be free on
# the machine; still pick one unlikely to collide with anything else.
export PGHOST="$BENCH_DIR"
export PGPORT=$((20000 + $$ % 10000))
export PGDATABASE=bench

stop_cluster() {
    if [ -f "$data/postmaster.pid" ]; then
        dlq_as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1
    fi
    if [ "$(id -u)" -eq 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
        mkdir -p "$root/tmp_bench"
        cp "$BENCH_REPORT" "$root/tmp_bench/report.md" 2>/dev/null
        rm -rf "$BENCH_DIR"
    fi
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

echo "initdb in $data"
if ! dlq_as_pg "$PG_BIN/initdb" -D "$data" -U "$PGUSER" -A trust -E UTF8 --locale=C >"$BENCH_DIR/initdb.log" 2>&1; then
    cat "$BENCH_DIR/initdb.log"
    exit 1
fi
cat >>"$data/postgresql.conf" <<EOF

# tests/bench/run.sh: a throwaway cluster for benchmarks (see tests/bench/README.md)
listen_addresses = ''
port = $PGPORT
unix_socket_directories = '$BENCH_DIR'
shared_preload_libraries = 'dlq'
max_worker_processes = 16
shared_buffers = 1GB
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 8GB
checkpoint_timeout = 30min
max_connections = 50
logging_collector = off
EOF
if ! dlq_as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$BENCH_DIR/server.log" -w start >/dev/null; then
    cat "$BENCH_DIR/server.log"
    exit 1
fi
if ! "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE bench" ||
    ! "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION dlq"; then
    exit 1
fi

{
    echo "# dlq benchmarks"
    echo
    echo "PostgreSQL $("$PG_BIN/psql" -X -At -c 'SHOW server_version'), $(nproc) CPUs," \
        "BENCH_SCALE=$BENCH_SCALE, $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo "Settings: shared_buffers=1GB, max_wal_size=8GB, checkpoint_timeout=30min;" \
        "fsync, synchronous_commit, autovacuum, JIT at their defaults."
    echo
} >>"$BENCH_REPORT"

failed=()
for script in tests/bench/bench_*.sh; do
    name=$(basename "$script" .sh)
    [ -n "${BENCH_ONLY:-}" ] && [[ $name != *"$BENCH_ONLY"* ]] && continue
    echo
    echo "=== $name ==="
    start=$(date +%s)
    if bash "$script"; then
        echo "--- $name done in $(($(date +%s) - start)) s"
    else
        echo "--- $name FAILED (exit $?) after $(($(date +%s) - start)) s"
        failed+=("$name")
        printf '\n**%s failed**; see its output above.\n\n' "$name" >>"$BENCH_REPORT"
    fi
done

echo
echo "=================== report ($BENCH_REPORT) ==================="
cat "$BENCH_REPORT"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
