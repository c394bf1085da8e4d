#!/usr/bin/env bash
# make demo: install what is missing, build, start a throwaway cluster under
# the working tree (or /tmp when run as root), run a short end-to-end story
# with dlq and print what happened, then stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

dlq_ensure_deps
echo "== building and installing dlq"
dlq_build_install

if [ "$(id -u)" -eq 0 ]; then
    base=$(mktemp -d /tmp/dlq-demo.XXXXXX)
    chown postgres "$base"
else
    base=$(pwd)/tmp_demo
    rm -rf "$base"
    mkdir -p "$base"
fi
data=$base/data
port=${DLQ_DEMO_PORT:-54329}

stop() {
    dlq_as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    [ "$(id -u)" -eq 0 ] && rm -rf "$base"
    return 0
}
trap stop EXIT

# The postgres OS user may not be able to enter the clone (a home directory
# of mode 700, say): run from the cluster's directory and read the script
# through our own stdin.
story=$(pwd)/scripts/demo.sql
cd "$base"

echo "== starting a throwaway cluster in $data (port $port)"
dlq_as_pg "$PG_BIN/initdb" -D "$data" -A trust -U postgres >/dev/null
cat >>"$data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$base'
listen_addresses = ''
shared_preload_libraries = 'dlq'
dlq.naptime = 1
CONF
dlq_as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$base/server.log" -w start >/dev/null

echo "== running scripts/demo.sql"
echo
dlq_as_pg "$PG_BIN/psql" -X -h "$base" -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -q -f - <"$story"
echo
echo "== done; the cluster is stopped and removed"
