#!/usr/bin/env bash
# Makes a Redis or Valkey server of a given version runnable on this Debian 12 host without touching the host's
# apt sources: each version comes from a Debian suite that ships it, installed into a root of its own with
# debootstrap (once; later calls reuse it) and run with chroot. Loopback is shared, so the servers are reached
# on 127.0.0.1 as usual.
#
#   server-root.sh VERSION      prints ROOT=<dir or empty> and SERVER=<binary>, eval-able
#
# VERSION     server                              from
# redis-7.0   redis-server 7.0.15                 the host (Debian 12): no root
# redis-8.0   redis-server 8.0.2                  trixie
# valkey-8.0  valkey-server 8.0.1                 bookworm with bookworm-backports
# valkey-8.1  valkey-server 8.1.1                 trixie
# valkey-9.1  valkey-server 9.1.2                 sid
#
# Roots live in $SLOTSHIFT_ROOT_CACHE (default /var/cache/slotshift/roots), about 300 MB each; the mirror is the
# one the host's own Debian apt sources name. Needs root (debootstrap, chroot).
set -euo pipefail

say() { echo "server-root.sh: $*" >&2; }
die() { say "$*"; exit 1; }

version=${1:-}
case $version in
  redis-7.0) echo "ROOT="; echo "SERVER=redis-server"; exit 0 ;;
  redis-8.0) suite=trixie server=redis-server ;;
  valkey-8.0) suite=bookworm-backports server=valkey-server ;;
  valkey-8.1) suite=trixie server=valkey-server ;;
  valkey-9.1) suite=sid server=valkey-server ;;
  *) die "unknown server '$version': redis-7.0, redis-8.0, valkey-8.0, valkey-8.1 or valkey-9.1" ;;
esac

cache=${SLOTSHIFT_ROOT_CACHE:-/var/cache/slotshift/roots}
root=$cache/$suite
marker=$root/.slotshift-root-complete

if [ ! -f "$marker" ]; then
  [ "$(id -u)" -eq 0 ] || die "building the $suite root needs root (debootstrap, chroot)"
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
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
    rm -rf "$tmp"
    say "building a Debian $base root for $version in $root (once; about a minute and 300 MB)"
    include=valkey-server,redis-server
    [ "$base" = bookworm ] && include=redis-server  # valkey comes from backports, below
    debootstrap --variant=minbase --include="$include" "$base" "$tmp" "$mirror" >"$cache/$suite.log" 2>&1 ||
      die "debootstrap failed; see $cache/$suite.log"
    if [ "$suite" = bookworm-backports ]; then
      # Backports are enabled inside the root only.
      echo "deb $mirror bookworm-backports main" >"$tmp/etc/apt/sources.list.d/backports.list"
      chroot "$tmp" apt-get update -qq >>"$cache/$suite.log" 2>&1 &&
        chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports valkey-server \
          >>"$cache/$suite.log" 2>&1 || die "installing valkey-server from bookworm-backports failed; see $cache/$suite.log"
    fi
    touch "$tmp/.slotshift-root-complete"
    rm -rf "$root"
    mv "$tmp" "$root"
  fi
fi
chroot "$root" sh -c "command -v $server" >/dev/null || die "$server is missing from $root"
echo "ROOT=$root"
echo "SERVER=$server"
