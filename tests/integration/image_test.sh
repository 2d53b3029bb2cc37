#!/usr/bin/env bash
# The OCI image (deploy/image/build.sh) built from this build tree's binaries and run with buildah: both programs
# start inside it, every shared library they need resolves there, it runs as uid 10001 and not as root, it holds
# every package deploy/image/runtime-packages names, and slotshift-proxy inside it serves SET and GET for a real
# cluster started on the host (buildah run --isolation chroot shares the host's network), with its settings from
# a --config file mounted into the container, and its admin endpoint answering /healthz, /readyz and /metrics.
# deploy/image/Dockerfile, which cannot run here, is checked to read the same package list and name the same
# user. Exits non-zero on the first failure, saying what it was.
#
# Needs root and buildah (deploy/local/install-deps.sh). About 80 s the first time on a machine (the base root's
# debootstrap), about 15 s after.
set -euo pipefail
source_dir=${SLOTSHIFT_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
binary_dir=${SLOTSHIFT_BINARY_DIR:-$source_dir/build}
image_dir=$source_dir/deploy/image

fail() { echo "image_test: FAIL: $*" >&2; exit 1; }
ok() { echo "image_test: ok: $*"; }
started=$(date +%s)

storage=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
tag=localhost/slotshift:test-$$
work=$(mktemp -d)
ctr=
proxy_pid=
cluster_dir=
cleanup() {
  [ -z "$proxy_pid" ] || kill "$proxy_pid" 2>/dev/null || true
  [ -z "$ctr" ] || buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true
  buildah "${storage[@]}" rmi "$tag" >/dev/null 2>&1 || true
  [ -z "$cluster_dir" ] || "$source_dir/deploy/local/cluster.sh" stop --dir "$cluster_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- deploy/image/Dockerfile and build.sh agree (Docker cannot run here: this is what keeps the two in step).
uid=$(sed -n 's/^uid=\([0-9]*\)$/\1/p' "$image_dir/build.sh")
[ -n "$uid" ] || fail "build.sh sets no uid=N"
grep -q "^ARG SLOTSHIFT_UID=$uid\$" "$image_dir/Dockerfile" || fail "the Dockerfile's SLOTSHIFT_UID is not build.sh's $uid"
grep -q 'COPY deploy/image/runtime-packages' "$image_dir/Dockerfile" ||
  fail "the Dockerfile does not install deploy/image/runtime-packages"
grep -q '^USER ${SLOTSHIFT_UID}' "$image_dir/Dockerfile" || fail "the Dockerfile does not run as \${SLOTSHIFT_UID}"
ok "Dockerfile and build.sh name the same runtime packages and uid $uid"

# --- Build.
t0=$(date +%s)
"$image_dir/build.sh" --build-dir "$binary_dir" --tag "$tag" --archive "$work/image.tar" >/dev/null
[ -s "$work/image.tar" ] || fail "no OCI archive written"
ok "built $tag in $(($(date +%s) - t0)) s, OCI archive of $(($(stat -c %s "$work/image.tar") / 1048576)) MB"

# --- What the image says about itself.
config=$(buildah "${storage[@]}" inspect --type image --format \
  '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.ExposedPorts}}' "$tag")
[ "${config%%|*}" = "$uid:$uid" ] || fail "image user is '${config%%|*}', not $uid:$uid"
case $config in *'|[slotshift-proxy]|'*) ;; *) fail "entrypoint is not slotshift-proxy: $config" ;; esac
case $config in *'6379/tcp:'*'9180/tcp:'*) ;; *) fail "ports 6379 and 9180 not exposed: $config" ;; esac
ok "user $uid:$uid, entrypoint slotshift-proxy, ports 6379 and 9180"

# --- Inside the image.
ctr=$(buildah "${storage[@]}" from --quiet "$tag")
run() { buildah "${storage[@]}" run --isolation chroot "$@"; }
# What a command prints inside the image, stderr included. Once in some hundred runs here, buildah run printed
# nothing for a command that prints: a second try tells that apart from a real failure.
inside() {
  local out
  out=$(run "$ctr" -- "$@" 2>&1) && [ -n "$out" ] || out=$(run "$ctr" -- "$@" 2>&1) || true
  printf '%s' "$out"
}
out=$(inside slotshift-proxy --help)
[[ $out == "slotshift-proxy: "* ]] || fail "slotshift-proxy --help in the image: $out"
out=$(inside slotshift --help)
[[ $out == "slotshift: "* ]] || fail "slotshift --help in the image: $out"
ok "slotshift-proxy --help and slotshift --help run in the image"
out=$(inside id -u)
[ "$out" = "$uid" ] || fail "the image runs as uid '$out', not $uid"
ok "runs as uid $uid"
libs=$(inside ldd /usr/local/bin/slotshift-proxy /usr/local/bin/slotshift)
grep -q '=>' <<<"$libs" || fail "ldd in the image: $libs"
! grep -q 'not found' <<<"$libs" || fail "libraries missing in the image: $(grep 'not found' <<<"$libs")"
ok "every shared library resolves ($(grep -c '=>' <<<"$libs") lines of ldd)"
mapfile -t packages < <(grep -v '^\s*#' "$image_dir/runtime-packages" | grep -v '^\s*$')
installed=$(inside dpkg-query -W -f '${Package} ${Status}\n' "${packages[@]}")
for p in "${packages[@]}"; do
  grep -qx "$p install ok installed" <<<"$installed" || fail "$p is not installed in the image: $installed"
done
ok "every package of runtime-packages is installed"

# --- slotshift-proxy in the image in front of a real cluster on the host.
eval "$("$source_dir/deploy/local/cluster.sh" start --masters 3 --replicas 0 --owner-pid $$ 2>"$work/cluster.log")" ||
  fail "cluster.sh start: $(tail -5 "$work/cluster.log")"
cluster_dir=$SLOTSHIFT_CLUSTER_DIR
seed=${SLOTSHIFT_CLUSTER_NODES%%,*}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
echo "$port-$admin-token" >"$work/admin-token"
cat >"$work/proxy.json" <<JSON
{"listen": "127.0.0.1:$port", "seed": ["$seed"], "threads": 1, "admin": "127.0.0.1:$admin",
 "admin-token-file": "/etc/slotshift/admin-token"}
JSON
chmod 0644 "$work/proxy.json" "$work/admin-token"
# buildah run passes no signal on to the command, so the proxy says its own pid (chroot isolation shares the
# host's pid namespace) and is stopped by it.
mkdir "$work/run"
chmod 0777 "$work/run"
run -v "$work/proxy.json:/etc/slotshift/proxy.json:ro" -v "$work/admin-token:/etc/slotshift/admin-token:ro" \
  -v "$work/run:/run/slotshift" "$ctr" -- \
  sh -c 'echo $$ >/run/slotshift/pid; exec slotshift-proxy --config /etc/slotshift/proxy.json' \
  >"$work/proxy.log" 2>&1 &
runner=$!
for _ in $(seq 100); do [ -s "$work/run/pid" ] && break; sleep 0.1; done
proxy_pid=$(cat "$work/run/pid" 2>/dev/null) || fail "slotshift-proxy in the image did not start: $(cat "$work/proxy.log")"
for _ in $(seq 100); do
  [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
  kill -0 "$runner" 2>/dev/null || fail "slotshift-proxy in the image exited: $(cat "$work/proxy.log")"
  sleep 0.1
done
for i in $(seq 20); do
  [ "$(redis-cli -p "$port" set "image-test:$i" "value-$i")" = OK ] || fail "SET image-test:$i through the image's proxy"
done
for i in $(seq 20); do
  [ "$(redis-cli -p "$port" get "image-test:$i")" = "value-$i" ] || fail "GET image-test:$i through the image's proxy"
done
# The keys are where a cluster client finds them: on their slots' masters.
[ "$(redis-cli -c -h "${seed%:*}" -p "${seed#*:}" get image-test:7)" = value-7 ] || fail "image-test:7 is not in the cluster"
ok "SET and GET of 20 keys through slotshift-proxy in the image, on a 3-master cluster"
token=$(cat "$work/admin-token")
[ "$(curl -fsS "http://127.0.0.1:$admin/healthz")" = ok ] || fail "/healthz"
[ "$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$admin/readyz")" = ready ] || fail "/readyz"
metrics=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$admin/metrics") || fail "/metrics"
grep -q '^# TYPE ' <<<"$metrics" || fail "/metrics is not in Prometheus's text format"
ok "admin endpoint: /healthz, /readyz and /metrics (with the token from the mounted file)"
# The probes of deploy/k8s are httpGet, which sends no token: /readyz answers without one, /metrics does not.
[ "$(curl -fsS "http://127.0.0.1:$admin/readyz")" = ready ] || fail "/readyz without the token"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/metrics")" = 401 ] ||
  fail "/metrics answers without the token"
ok "the probes need no token, /metrics does"
kill -TERM "$proxy_pid"
for _ in $(seq 100); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$proxy_pid" 2>/dev/null || fail "slotshift-proxy in the image still runs 10 s after SIGTERM"
proxy_pid=
wait "$runner" || fail "buildah run of slotshift-proxy exited with $?: $(tail -5 "$work/proxy.log")"
ok "slotshift-proxy in the image stopped on SIGTERM, exit status 0"
ok "all checks passed in $(($(date +%s) - started)) s"
echo "1 passed, 0 failed"
