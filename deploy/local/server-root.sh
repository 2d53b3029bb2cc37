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
# deploy/local/install-deps.sh installs. A build that fails is retried once from nothing; one that is killed
# leaves nothing half built behind.
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

cache=${SLOTSHIFT_ROOT_CACHE:-/var/cache/slotshift/roots}
root=$cache/$suite
marker=$root/.slotshift-root-complete

# --check: is the root there already? (tests/run.sh says what it is about to build.)
if [ "${2:-}" = --check ]; then [ -f "$marker" ]; exit; fi

# debootstrap runs in a root of its own at $root.tmp and mounts /proc and /sys there while it installs: whatever
# a failed or killed attempt left is unmounted, then removed, so that the next attempt starts from nothing.
discard() {
  local dir=$1
  [ -e "$dir" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
}

# One attempt at the root in $tmp; its output goes to the log. A mirror that stops answering must not hang the
# caller: debootstrap gets 15 minutes (a root takes about a minute here).
build_once() {
  discard "$tmp"
  timeout 900 debootstrap --variant=minbase --include="$include" "$base" "$tmp" "$mirror" >>"$log" 2>&1 || return 1
  if [ "$suite" = bookworm-backports ]; then
    # Backports are enabled inside the root only.
    echo "deb $mirror bookworm-backports main" >"$tmp/etc/apt/sources.list.d/backports.list"
    timeout 600 chroot "$tmp" apt-get update -qq >>"$log" 2>&1 || return 1
    timeout 600 chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
      valkey-server >>"$log" 2>&1 || return 1
  fi
  chroot "$tmp" sh -c "command -v $server" >>"$log" 2>&1
}

if [ ! -f "$marker" ]; then
  [ "$(id -u)" -eq 0 ] || die "building the $suite root needs root (debootstrap, chroot)"
  # Installed by deploy/local/install-deps.sh, never from here: roots are built side by side, and apt takes one
  # caller at a time.
  command -v debootstrap >/dev/null || die "debootstrap is missing: run deploy/local/install-deps.sh first"
  # The host's own Debian mirror: the first deb822 "URIs:" (or one-line "deb") source that is not security.
  mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security |
    grep '/debian' | head -1 || true)
  if [ -z "$mirror" ]; then
    mirror=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' |
      grep -v security | grep '/debian' | head -1 || true)
  fi
  [ -n "$mirror" ] || die "cannot find the host's Debian mirror in /etc/apt/sources.list*"
  mkdir -p "$cache"
  exec 9>"$cache/.$suite.lock"
  flock 9
  if [ ! -f "$marker" ]; then
    base=$suite
    [ "$suite" = bookworm-backports ] && base=bookworm
    tmp=$root.tmp
    log=$cache/$suite.log
    include=valkey-server,redis-server
    [ "$base" = bookworm ] && include=redis-server  # valkey comes from backports, below
    # An interrupted build leaves no half-built root behind.
    trap 'discard "$tmp"' EXIT
    trap 'exit 130' INT TERM
    say "building a Debian $base root for $version in $root (once; about a minute and 300 MB)"
    : >"$log"
    if ! build_once; then
      say "the first attempt failed (last lines of $log below); trying once more"
      tail -n 5 "$log" | sed 's/^/    /' >&2
      echo "=== second attempt" >>"$log"
      if ! build_once; then
        say "building the $suite root failed twice; the last lines of $log:"
        tail -n 30 "$log" | sed 's/^/    /' >&2
        exit 1
      fi
    fi
    touch "$tmp/.slotshift-root-complete"
    # The finished root replaces whatever was there in one rename; a run killed before it leaves only $tmp,
    # which the next run discards.
    discard "$root"
    mv "$tmp" "$root"
    trap - EXIT INT TERM
  fi
fi
chroot "$root" sh -c "command -v $server" >/dev/null || die "$server is missing from $root"
echo "ROOT=$root"
echo "SERVER=$server"
