# Shared by .ci/run, scripts/demo.sh and tests/bench/run.sh: find or install
# PostgreSQL's server development files, and run commands as a user that
# PostgreSQL accepts (it refuses to run as root).

PG_MAJOR=${PG_MAJOR:-15}

# dlq_missing_packages [PG_CONFIG]: print the Debian packages that must be
# installed before dlq can be built and tested, one per line (nothing when all
# is there).  It checks the files the build and the test suites really use,
# found through pg_config, not directories that another package also ships:
# /usr/lib/postgresql/N/lib/pgxs comes with postgresql-client-N, but the
# server headers only with postgresql-server-dev-N.
dlq_missing_packages() {
    local pgc=${1:-$PG_CONFIG} major=$PG_MAJOR need=() v
    local server=postgresql-$PG_MAJOR dev=postgresql-server-dev-$PG_MAJOR
    if ! v=$("$pgc" --version 2>/dev/null); then
        printf '%s\n' "$server" "$dev"
    else
        major=$(echo "$v" | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')
        major=${major:-$PG_MAJOR}
        server=postgresql-$major
        dev=postgresql-server-dev-$major
        local bindir incdir pgxs pkglib
        bindir=$("$pgc" --bindir 2>/dev/null)
        incdir=$("$pgc" --includedir-server 2>/dev/null)
        pgxs=$("$pgc" --pgxs 2>/dev/null)
        pkglib=$("$pgc" --pkglibdir 2>/dev/null)
        [ -n "$bindir" ] && [ -x "$bindir/postgres" ] && [ -x "$bindir/initdb" ] || need+=("$server")
        # Headers, the PGXS makefile and the test drivers PGXS runs
        # (pg_regress, pg_isolation_regress, the TAP modules).
        [ -n "$incdir" ] && [ -f "$incdir/postgres.h" ] || need+=("$dev")
        if [ -z "$pgxs" ] || [ ! -f "$pgxs" ] ||
            [ ! -x "$pkglib/pgxs/src/test/regress/pg_regress" ] ||
            [ ! -x "$pkglib/pgxs/src/test/isolation/pg_isolation_regress" ] ||
            [ ! -f "$pkglib/pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm" ]; then
            need+=("$dev")
        fi
        printf '%s\n' "${need[@]}" | sort -u | grep .
    fi
    perl -MIPC::Run -e1 >/dev/null 2>&1 || echo libipc-run-perl
    command -v make >/dev/null 2>&1 || echo make
    command -v gcc >/dev/null 2>&1 || echo gcc
    return 0
}

# Install what is missing from Debian's archive (as root, or with sudo).
dlq_ensure_deps() {
    local need
    need=$(dlq_missing_packages "$PG_CONFIG" | sort -u | tr '\n' ' ')
    need=${need% }
    [ -z "$need" ] && return 0
    echo "Installing from Debian: $need"
    local sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q >/dev/null || true
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $need >/dev/null ||
        return 1
    # pg_config may only exist now
    dlq_find_pg_config
    need=$(dlq_missing_packages "$PG_CONFIG" | tr '\n' ' ')
    if [ -n "$need" ]; then
        echo "still missing after installing: $need" >&2
        return 1
    fi
}

# PG_CONFIG from the environment wins; else this major version's.
dlq_find_pg_config() {
    if [ -z "${DLQ_PG_CONFIG_GIVEN:-}" ]; then
        PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
        [ -x "$PG_CONFIG" ] || PG_CONFIG=pg_config
    fi
    PG_BIN=$("$PG_CONFIG" --bindir 2>/dev/null || echo "/usr/lib/postgresql/$PG_MAJOR/bin")
}
[ -n "${PG_CONFIG:-}" ] && DLQ_PG_CONFIG_GIVEN=1
dlq_find_pg_config

# Build and install the extension (installing needs root or sudo).
dlq_build_install() {
    PG_BIN=$("$PG_CONFIG" --bindir)
    make -s PG_CONFIG="$PG_CONFIG" >/dev/null
    if [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
        make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
    else
        sudo make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
    fi
}

# Run a command as the postgres OS user when we are root, else as ourselves.
dlq_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A copy of the tree the test user may write into (tests write results/ and
# tmp_check*/ next to the sources).  Prints its path.
dlq_writable_tree() {
    if [ "$(id -u)" -ne 0 ]; then
        pwd
        return
    fi
    local dir
    dir=$(mktemp -d /tmp/dlq-tree.XXXXXX)
    tar --exclude=./tmp_check\* --exclude=./tmp_demo --exclude=./tmp_bench --exclude=./.git -cf - . | tar -C "$dir" -xf -
    chown -R postgres "$dir"
    echo "$dir"
}
