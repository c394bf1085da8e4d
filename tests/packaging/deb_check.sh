#!/usr/bin/env bash
# The Debian package, end to end: build it (make deb), install it with apt on
# this machine, create the extension in a throwaway cluster that preloads it,
# run a store / list / replay / claim / ack round, and remove the package
# again.  Prints TAP-style "ok" / "not ok" lines.
#
# It installs into the system's PostgreSQL, so it runs only as root against
# Debian's own PostgreSQL (no PG_CONFIG pointing elsewhere), and before the
# suites build and install dlq from source (.ci/run calls it first).
set -uo pipefail
cd "$(dirname "$0")/../.."

major=${PG_MAJOR:-15}
sys_pgc=/usr/lib/postgresql/$major/bin/pg_config
if [ "$(id -u)" -ne 0 ] || { [ -n "${PG_CONFIG:-}" ] && [ "$PG_CONFIG" != "$sys_pgc" ] &&
    [ "$(command -v "$PG_CONFIG")" != /usr/bin/pg_config ]; }; then
    echo "# skip: the package check needs root and Debian's PostgreSQL $major (PG_CONFIG=${PG_CONFIG:-})"
    exit 0
fi

pkg=postgresql-$major-dlq
work=$(mktemp -d /tmp/dlq-debcheck.XXXXXX)
chmod 755 "$work"
bin=/usr/lib/postgresql/$major/bin
port=$((20000 + RANDOM % 20000))
cleanup() {
    [ -f "$work/data/postmaster.pid" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >>"$work/log" 2>&1; then
        echo "ok - $what"
    else
        echo "not ok - $what"
        tail -15 "$work/log" | sed 's/^/# /'
        return 1
    fi
}

check "make deb builds $pkg" env DLQ_DEB_DIR="$work/dist" bash scripts/deb.sh || exit 0
deb=$(ls "$work"/dist/"${pkg}"_*.deb)
check "the package installs with apt" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$deb" || exit 0

has_files() {
    local f
    for f in "$bin/../lib/dlq.so" /usr/share/postgresql/$major/extension/dlq.control \
        /usr/share/postgresql/$major/extension/dlq--1.0.sql \
        /usr/share/postgresql/$major/extension/dlq--1.0--1.1.sql; do
        dpkg -S "$(readlink -f "$f")" | grep -q "^$pkg:" || { echo "not from $pkg: $f"; return 1; }
    done
}
check "the package installs the library, the control file and every install and upgrade script" has_files

mkdir "$work/data" "$work/sock" && chown postgres "$work/data" "$work/sock"
start_cluster() {
    runuser -u postgres -- "$bin/initdb" -A trust -D "$work/data" >/dev/null &&
        cat >>"$work/data/postgresql.conf" <<CONF &&
port = $port
listen_addresses = ''
unix_socket_directories = '$work/sock'
shared_preload_libraries = 'dlq'
dlq.naptime = 1s
CONF
        runuser -u postgres -- "$bin/pg_ctl" -D "$work/data" -l "$work/data/server.log" -w start
}
check "a cluster preloading dlq from the package starts" start_cluster || exit 0

sql() { runuser -u postgres -- "$bin/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$work/sock" -p "$port" -d postgres -c "$1"; }
expect() { # expect DESCRIPTION SQL EXPECTED
    local got
    got=$(sql "$2" 2>&1)
    if [ "$got" = "$3" ]; then
        echo "ok - $1"
    else
        echo "not ok - $1"
        echo "#   got:      $got"
        echo "#   expected: $3"
    fi
}
expect "CREATE EXTENSION dlq gives version 1.1" \
    "CREATE EXTENSION dlq; SELECT extversion FROM pg_extension WHERE extname = 'dlq'" "1.1"
expect "dlq_store keeps a message and dlq_list lists it" \
    "SELECT (dlq_configure('orders', require_listener => false)).queue;
     SELECT dlq_store('orders', '{\"id\": 1}', 'handler failed', sqlstate => '40001');
     SELECT string_agg(payload->>'id' || ':' || status, ',') FROM dlq_list('orders')" "orders
1
1:pending"
expect "dlq_reprocess_all hands it back, dlq_claim and dlq_ack close it" \
    "SELECT (dlq_reprocess_all('orders')->>'notified')::int;
     SELECT count(*) FROM dlq_claim('orders');
     SELECT dlq_ack(ARRAY[1]);
     SELECT status FROM dlq_get(1)" "1
1
1
resolved"
for _ in $(seq 1 30); do
    [ "$(sql "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'dlq worker'")" = t ] && break
    sleep 1
done
expect "the background worker runs" \
    "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'dlq worker'" "t"
runuser -u postgres -- "$bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null

check "the package is removed with apt" env DEBIAN_FRONTEND=noninteractive \
    apt-get remove -y -q "$pkg"
gone() { [ ! -e /usr/share/postgresql/$major/extension/dlq.control ] && [ ! -e "$bin/../lib/dlq.so" ]; }
check "removing it takes its files away" gone
exit 0
