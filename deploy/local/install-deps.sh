#!/usr/bin/env bash
# Installs every Debian package slotshift builds, tests, benchmarks and demos with. Idempotent: it asks apt only
# for what is missing, so a machine that has everything pays one dpkg query. It is the only script of the project
# that calls apt on the host: run it once, before anything runs side by side (tests/run.sh and demo.sh do).
#
#   install-deps.sh           installs what is missing
#   install-deps.sh --list    prints what is missing, one package a line, and installs nothing
set -euo pipefail
list_only=false
[ "${1:-}" = --list ] && list_only=true

packages=(
  build-essential cmake ninja-build pkg-config
  libuv1-dev libhiredis-dev nlohmann-json3-dev libcli11-dev doctest-dev libcpp-httplib-dev liblzf-dev libssl-dev
  # openssl: the tests' certificates.
  openssl
  redis-server redis-tools python3 python3-redis
  # The tests read /metrics (the proxy's and a running move's) with Prometheus's own text-format parser.
  python3-prometheus-client
  # deploy/local/server-root.sh: the Debian roots of the other server versions (tests/run.sh, demo --server).
  debootstrap
  # deploy/image/build.sh: the OCI image, made and run (tests/integration/image_test.sh) without a registry or a
  # container daemon; curl asks the proxy inside it for its probes and metrics.
  buildah curl
)

# Node.js runs the JavaScript client tests (ioredis, node-redis); a machine that already has node and npm (from any
# source) keeps them.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

# Debian's kubectl (kubernetes-client, 1.20) renders deploy/k8s for tests/integration/k8s_manifests_test.py. A
# machine whose /usr/bin/kubectl comes from another package (a cloud SDK's) cannot install it beside that one:
# there the Debian package is unpacked into a directory of its own instead, where the test looks for it.
kubectl_dir=/var/cache/slotshift/kubernetes-client
kubectl_owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)
unpack_kubectl=false
if [ -z "$kubectl_owner" ] || [ "$kubectl_owner" = kubernetes-client ]; then
  packages+=(kubernetes-client)
elif [ ! -x $kubectl_dir/usr/bin/kubectl ]; then
  unpack_kubectl=true
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if $list_only; then
  [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}"
  ! $unpack_kubectl || echo "kubernetes-client (unpacked into $kubectl_dir)"
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && ! $unpack_kubectl && exit 0

[ ${#missing[@]} -eq 0 ] || echo "install-deps: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
[ ${#missing[@]} -eq 0 ] || "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if $unpack_kubectl; then
  echo "install-deps: unpacking kubernetes-client into $kubectl_dir (/usr/bin/kubectl is $kubectl_owner's)" >&2
  download=$(mktemp -d)
  # Into a directory apt's own download user cannot write: download as root, which apt would only warn about.
  (cd "$download" && "${sudo[@]}" apt-get download -qq -o APT::Sandbox::User=root kubernetes-client)
  "${sudo[@]}" mkdir -p $kubectl_dir
  "${sudo[@]}" dpkg-deb -x "$download"/kubernetes-client_*.deb $kubectl_dir
  rm -rf "$download"
fi
# Debian starts a standalone redis-server on 6379 after installing it; slotshift never uses it, and a fresh
# machine should not keep a stray server listening.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  "${sudo[@]}" systemctl stop redis-server || true
fi
