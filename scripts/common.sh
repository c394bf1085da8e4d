# Shared by .ci/run, scripts/demo.sh and tests/bench/run.sh: find or install
# PostgreSQL's server development files, and run commands as a user that
# PostgreSQL accepts (it refuses to run as root).

PG_MAJOR=${PG_MAJOR:-15}

# Install what is missing from Debian's archive (as root, or with sudo).
dlq_ensure_deps() {
    local need=()
    command -v pg_config >/dev/null 2>&1 && [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] \
        && [ -d "/usr/lib/postgresql/$PG_MAJOR/lib/pgxs" ] || need+=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR)
    perl -MIPC::Run -e1 >/dev/null 2>&1 || need+=(libipc-run-perl)
    command -v make >/dev/null 2>&1 && command -v gcc >/dev/null 2>&1 || need+=(make gcc)
    [ ${#need[@]} -eq 0 ] && return 0
    echo "Installing from Debian: ${need[*]}"
    local sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
        return 1
    # pg_config may only exist now
    dlq_find_pg_config
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
