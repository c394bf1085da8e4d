#!/usr/bin/env bash
# Tests of the dependency check in scripts/common.sh (dlq_missing_packages):
# it must ask for exactly the Debian packages that provide what the build and
# the test suites use.  Each case builds a fake PostgreSQL installation under
# a temporary directory, with a fake pg_config that reports its paths, leaves
# out one piece, and checks what the check asks for.  Prints "ok N - ..." or
# "not ok N - ..." per case (TAP), so .ci/run counts them.
set -u
cd "$(dirname "$0")/../.."
. scripts/common.sh

work=$(mktemp -d /tmp/dlq-depcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
n=0
fails=0

# fake_install DIR MAJOR: a complete fake installation of PostgreSQL MAJOR.
fake_install() {
    local d=$1 major=$2
    mkdir -p "$d/bin" "$d/include/server" "$d/lib/pgxs/src/makefiles" \
        "$d/lib/pgxs/src/test/regress" "$d/lib/pgxs/src/test/isolation" \
        "$d/lib/pgxs/src/test/perl/PostgreSQL/Test"
    for b in postgres initdb; do printf '#!/bin/sh\n' >"$d/bin/$b"; chmod +x "$d/bin/$b"; done
    touch "$d/include/server/postgres.h" "$d/lib/pgxs/src/makefiles/pgxs.mk" \
        "$d/lib/pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm"
    for t in regress/pg_regress isolation/pg_isolation_regress; do
        printf '#!/bin/sh\n' >"$d/lib/pgxs/src/test/$t"
        chmod +x "$d/lib/pgxs/src/test/$t"
    done
    cat >"$d/bin/pg_config" <<PGC
#!/bin/sh
case "\$1" in
    --version) echo "PostgreSQL $major.3 (Debian $major.3-1)" ;;
    --bindir) echo "$d/bin" ;;
    --includedir-server) echo "$d/include/server" ;;
    --pgxs) echo "$d/lib/pgxs/src/makefiles/pgxs.mk" ;;
    --pkglibdir) echo "$d/lib" ;;
    *) exit 1 ;;
esac
PGC
    chmod +x "$d/bin/pg_config"
}

# check NAME PG_CONFIG EXPECTED: the PostgreSQL packages asked for (IPC::Run,
# make and gcc depend on this machine and are left out) must be EXPECTED.
check() {
    local name=$1 pgc=$2 expected=$3 got
    got=$(dlq_missing_packages "$pgc" | grep -E '^postgresql' | sort | tr '\n' ' ')
    got=${got% }
    n=$((n + 1))
    if [ "$got" = "$expected" ]; then
        echo "ok $n - $name"
    else
        echo "not ok $n - $name"
        echo "#   expected: \"$expected\""
        echo "#        got: \"$got\""
        fails=$((fails + 1))
    fi
}

# Each case gets its own complete installation, then loses one piece.
case_dir() {
    local d="$work/$1"
    fake_install "$d" "${2:-15}"
    echo "$d"
}

d=$(case_dir complete)
check "everything present: nothing to install" "$d/bin/pg_config" ""

d=$(case_dir no_headers)
rm "$d/include/server/postgres.h"
check "server only (no postgres.h, as with postgresql-15 alone): asks for the headers" \
    "$d/bin/pg_config" "postgresql-server-dev-15"

d=$(case_dir no_pgxs)
rm "$d/lib/pgxs/src/makefiles/pgxs.mk"
check "no PGXS makefile: asks for the server dev package" "$d/bin/pg_config" "postgresql-server-dev-15"

d=$(case_dir no_pg_regress)
rm "$d/lib/pgxs/src/test/regress/pg_regress"
check "no pg_regress: asks for the server dev package" "$d/bin/pg_config" "postgresql-server-dev-15"

d=$(case_dir no_isolation)
rm "$d/lib/pgxs/src/test/isolation/pg_isolation_regress"
check "no pg_isolation_regress: asks for the server dev package" "$d/bin/pg_config" "postgresql-server-dev-15"

d=$(case_dir no_tap)
rm "$d/lib/pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm"
check "no TAP modules: asks for the server dev package" "$d/bin/pg_config" "postgresql-server-dev-15"

d=$(case_dir no_server)
rm "$d/bin/postgres"
check "headers but no server binary: asks for the server" "$d/bin/pg_config" "postgresql-15"

d=$(case_dir client_only)
rm "$d/bin/postgres" "$d/bin/initdb" "$d/include/server/postgres.h"
check "client only (pgxs directory present, as postgresql-client ships it): asks for both" \
    "$d/bin/pg_config" "postgresql-15 postgresql-server-dev-15"

check "no pg_config at all: asks for the server and its dev package" \
    "$work/does-not-exist/pg_config" "postgresql-15 postgresql-server-dev-15"

d=$(case_dir other_major 16)
rm "$d/include/server/postgres.h"
check "the packages follow pg_config's major version" "$d/bin/pg_config" "postgresql-server-dev-16"

# The real installation, after .ci/run installed what was missing.
check "this machine, after dlq_ensure_deps: nothing missing" "$PG_CONFIG" ""

echo "1..$n"
[ "$fails" -eq 0 ]
