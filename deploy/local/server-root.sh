#!/usr/bin/env bash
# Makes a Redis or Valkey server of a given version runnable on this Debian 12 host without touching the host's
# apt sources: each version comes from a Debian suite that ships it, installed into a root of its own with
# debootstrap (once; later calls reuse it) and run with chroot. Loopback is shared, so the servers are reached
# on 127.0.0.1 as usual.
#
#   server-root.sh VERSION           prints ROOT=<dir or empty> and SERVER=<binary>, eval-able
#   server-root.sh VERSION --check   exits 0 when the root is built already (builds nothing)
#
# VERSION     server                              from
# redis-7.0   redis-server 7.0.15                 the host (Debian 12): no root
# redis-8.0   redis-server 8.0.2                  trixie
# valkey-8.0  valkey-server 8.0.1                 bookworm with bookworm-backports
# valkey-8.1  valkey-server 8.1.1                 trixie
# valkey-9.1  valkey-server 9.1.2                 sid
#
# Roots live in $SLOTSHIFT_ROOT_CACHE (default /var/cache/slotshift/roots), about 300 MB each; the mirror is the
# one the host's own Debian apt sources name. Needs root (debootstrap, chroot) and debootstrap, which
# deploy/local/install-deps.sh installs; deploy/local/debian-root.sh builds it (retried once, nothing half built
# left behind).
set -euo pipefail

say() { echo "server-root.sh: $*" >&2; }
die() { say "$*"; exit 1; }

version=${1:-}
case $version in
  redis-7.0) [ "${2:-}" = --check ] || { echo "ROOT="; echo "SERVER=redis-server"; }; exit 0 ;;
  redis-8.0) suite=trixie server=redis-server ;;
  valkey-8.0) suite=bookworm-backports server=valkey-server ;;
  valkey-8.1) suite=trixie server=valkey-server ;;
  valkey-9.1) suite=sid server=valkey-server ;;
  *) die "unknown server '$version': redis-7.0, redis-8.0, valkey-8.0, valkey-8.1 or valkey-9.1" ;;
esac

# The root builder shared with deploy/image/build.sh: cache, mirror, lock, retry and clean-up.
. "$(dirname "${BASH_SOURCE[0]}")/debian-root.sh"

# --check: is the root there already? (tests/run.sh says what it is about to build.)
if [ "${2:-}" = --check ]; then debian_root_ready "$suite"; exit; fi

# Backports are enabled inside the root only, after debootstrap has made it from bookworm.
add_backports() {
  local tmp=$1 log=$2 mirror
  mirror=$(debian_root_mirror)
  echo "deb $mirror bookworm-backports main" >"$tmp/etc/apt/sources.list.d/backports.list"
  timeout 600 chroot "$tmp" apt-get update -qq >>"$log" 2>&1 || return 1
  timeout 600 chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    valkey-server >>"$log" 2>&1 || return 1
  chroot "$tmp" sh -c "command -v valkey-server" >>"$log" 2>&1
}
# A root whose server is missing fails its attempt, and is tried once more.
has_server() { chroot "$1" sh -c "command -v $server" >>"$2" 2>&1; }

if [ "$suite" = bookworm-backports ]; then
  # valkey comes from backports, above
  debian_root "$suite" bookworm redis-server add_backports || exit 1
else
  debian_root "$suite" "$suite" valkey-server,redis-server has_server || exit 1
fi
root=$DEBIAN_ROOT
chroot "$root" sh -c "command -v $server" >/dev/null || die "$server is missing from $root"
echo "ROOT=$root"
echo "SERVER=$server"
