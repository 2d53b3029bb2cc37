# shellcheck shell=bash
# Sourced, not run: builds a Debian root with debootstrap from the host's own mirror into a cache outside the
# repository, once, and reuses it afterwards. deploy/local/server-root.sh (the other server versions) and
# deploy/image/build.sh (the image's base) both build their roots this way.
#
#   debian_root NAME SUITE INCLUDE [AFTER]
#     makes $SLOTSHIFT_ROOT_CACHE/NAME (default cache /var/cache/slotshift/roots) a complete root of SUITE with
#     the comma-separated packages INCLUDE, unless it is there already; AFTER, when given, is a function called
#     with the unfinished root's path and the log file, for what debootstrap cannot do (another suite's
#     packages), and fails the attempt by returning non-zero. Sets DEBIAN_ROOT to the root's path.
#   debian_root_ready NAME
#     exits 0 when the root is complete (builds nothing).
#
# Needs root (debootstrap, chroot). A build that fails is retried once from nothing; one that is killed leaves
# nothing half built behind. Concurrent callers for the same NAME wait for each other (flock).

debian_root_cache() { echo "${SLOTSHIFT_ROOT_CACHE:-/var/cache/slotshift/roots}"; }

debian_root_ready() { [ -f "$(debian_root_cache)/$1/.slotshift-root-complete" ]; }

# debootstrap mounts /proc and /sys in the root while it installs: whatever a failed or killed attempt left is
# unmounted, then removed, so that the next attempt starts from nothing.
debian_root_discard() {
  local dir=$1
  [ -e "$dir" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
}

# The host's own Debian mirror: the first deb822 "URIs:" (or one-line "deb") source that is not security.
debian_root_mirror() {
  local mirror
  mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security |
    grep '/debian' | head -1 || true)
  if [ -z "$mirror" ]; then
    mirror=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' |
      grep -v security | grep '/debian' | head -1 || true)
  fi
  [ -n "$mirror" ] || return 1
  echo "$mirror"
}

# One attempt at the root in $1; its output goes to the log $2. A mirror that stops answering must not hang the
# caller: debootstrap gets 15 minutes (a root takes about a minute here).
debian_root_once() {
  local tmp=$1 log=$2 suite=$3 include=$4 after=$5 mirror=$6
  debian_root_discard "$tmp"
  timeout 900 debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$tmp" "$mirror" \
    >>"$log" 2>&1 || return 1
  [ -z "$after" ] || "$after" "$tmp" "$log"
}

debian_root() {
  local name=$1 suite=$2 include=$3 after=${4:-}
  local cache root tmp log mirror
  cache=$(debian_root_cache)
  root=$cache/$name
  DEBIAN_ROOT=$root  # for the caller
  export DEBIAN_ROOT
  debian_root_ready "$name" && return 0
  [ "$(id -u)" -eq 0 ] || { echo "debian-root: building the $name root needs root (debootstrap, chroot)" >&2; return 1; }
  # Installed by deploy/local/install-deps.sh, never from here: roots are built side by side, and apt takes one
  # caller at a time.
  command -v debootstrap >/dev/null ||
    { echo "debian-root: debootstrap is missing: run deploy/local/install-deps.sh first" >&2; return 1; }
  mirror=$(debian_root_mirror) ||
    { echo "debian-root: cannot find the host's Debian mirror in /etc/apt/sources.list*" >&2; return 1; }
  mkdir -p "$cache"
  (
    exec 9>"$cache/.$name.lock"
    flock 9
    debian_root_ready "$name" && exit 0
    tmp=$root.tmp
    log=$cache/$name.log
    # An interrupted build leaves no half-built root behind.
    trap 'debian_root_discard "$tmp"' EXIT
    trap 'exit 130' INT TERM
    echo "debian-root: building a Debian $suite root in $root (once; about a minute)" >&2
    : >"$log"
    if ! debian_root_once "$tmp" "$log" "$suite" "$include" "$after" "$mirror"; then
      echo "debian-root: the first attempt failed (last lines of $log below); trying once more" >&2
      tail -n 5 "$log" | sed 's/^/    /' >&2
      echo "=== second attempt" >>"$log"
      if ! debian_root_once "$tmp" "$log" "$suite" "$include" "$after" "$mirror"; then
        echo "debian-root: building the $name root failed twice; the last lines of $log:" >&2
        tail -n 30 "$log" | sed 's/^/    /' >&2
        exit 1
      fi
    fi
    touch "$tmp/.slotshift-root-complete"
    # The finished root replaces whatever was there in one rename; a run killed before it leaves only $tmp,
    # which the next run discards.
    debian_root_discard "$root"
    mv "$tmp" "$root"
    trap - EXIT INT TERM
  )
}
