#!/usr/bin/env bash
# make deb: build the Debian package postgresql-15-dlq the way Debian builds
# PostgreSQL extensions (debian/ with the pgxs_loop build system of
# postgresql-server-dev-all), from a copy of the tree so the working tree stays
# clean.  Installs the build tools from Debian's archive when missing (as root,
# or with sudo).  The packages end up in $DLQ_DEB_DIR (default: ./dist).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

out=${DLQ_DEB_DIR:-$PWD/dist}
need=()
command -v dpkg-buildpackage >/dev/null 2>&1 || need+=(dpkg-dev)
command -v dh >/dev/null 2>&1 || need+=(debhelper)
[ -x /usr/bin/pg_buildext ] || need+=(postgresql-server-dev-all)
[ -f /usr/share/perl5/Debian/Debhelper/Buildsystem/pgxs_loop.pm ] || need+=(postgresql-server-dev-all)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "Installing from Debian: ${need[*]}"
    $sudo apt-get update -q >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        "${need[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
work=$(mktemp -d /tmp/dlq-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/dlq-$version"
mkdir "$src"
tar --exclude=./tmp_check\* --exclude=./tmp_demo --exclude=./tmp_bench --exclude=./.git \
    --exclude=./dist --exclude=./results --exclude=./output_iso -cf - . | tar -C "$src" -xf -
make -s -C "$src" clean >/dev/null 2>&1 || true
(cd "$src" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log"
    echo "dpkg-buildpackage failed" >&2
    exit 1
}
mkdir -p "$out"
cp "$work"/*.deb "$out"/
ls "$out"/*"_${version}_"*.deb
