#!/usr/bin/env bash
# Installs the Debian packages slotshift builds, tests and demos with. Idempotent: it asks apt only for what is
# missing, so a machine that has everything pays one dpkg query.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libuv1-dev libhiredis-dev nlohmann-json3-dev libcli11-dev doctest-dev libcpp-httplib-dev liblzf-dev
  redis-server redis-tools python3 python3-redis
)

# Node.js runs the ioredis client tests; a machine that already has node and npm (from any source) keeps them.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts a standalone redis-server on 6379 after installing it; slotshift never uses it, and a fresh
# machine should not keep a stray server listening.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  "${sudo[@]}" systemctl stop redis-server || true
fi
