#!/usr/bin/env bash
# Contributors' check (not run by CI; needs root, debootstrap and Debian's
# archive): run `make demo` and `make test` from a clone of this repository
# in fresh Debian 12 chroots that hold
#   nothing   - no PostgreSQL at all (only make, gcc, git, perl)
#   server    - only the postgresql-15 server package (the case where 1.0's
#               check wrongly found the server headers)
#   full      - the server, postgresql-server-dev-15 and libipc-run-perl
# and print the last lines of each.  Usage:
#   sudo scripts/check-fresh-machines.sh [nothing|server|full ...]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
base=${DLQ_CHROOT_BASE:-/var/tmp/dlq-chroot-base}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(nothing server full)

if [ ! -x "$base/usr/bin/make" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
    debootstrap --variant=minbase --include=make,gcc,git,ca-certificates,perl \
        bookworm "$base" http://deb.debian.org/debian >/dev/null
fi

for c in "${cases[@]}"; do
    root=$(mktemp -d /var/tmp/dlq-chroot-$c.XXXXXX)
    cp -a "$base/." "$root/"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/dev/shm"
    trap 'umount "$root/dev/shm" "$root/dev" "$root/proc" 2>/dev/null || true' EXIT
    case $c in
        nothing) pkgs= ;;
        server) pkgs="postgresql-15" ;;
        full) pkgs="postgresql-15 postgresql-server-dev-15 libipc-run-perl" ;;
        *) echo "unknown case $c" >&2; exit 2 ;;
    esac
    if [ -n "$pkgs" ]; then
        chroot "$root" sh -c "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null"
    fi
    git clone -q "$repo" "$root/root/dlq"
    echo "=== $c: make demo"
    chroot "$root" sh -c 'cd /root/dlq && make demo' >"$root/demo.log" 2>&1 && echo "make demo: ok" || { echo "make demo: FAILED"; tail -20 "$root/demo.log"; }
    echo "=== $c: make test"
    chroot "$root" sh -c 'cd /root/dlq && make test' >"$root/test.log" 2>&1 || true
    grep -E '^[0-9]+ passed, [0-9]+ failed' "$root/test.log" || tail -5 "$root/test.log"
    umount "$root/dev/shm" "$root/dev" "$root/proc" || true
    trap - EXIT
    echo "logs: $root/demo.log $root/test.log"
done
