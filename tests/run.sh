#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, configures, builds, and runs every unit and integration
# test through ctest. Exits non-zero on any failure.
#
#   tests/run.sh                    the default build (RelWithDebInfo, warnings as errors)
#   tests/run.sh --preset asan      AddressSanitizer + UndefinedBehaviorSanitizer build
#   tests/run.sh -- -L unit         extra arguments after -- go to ctest (here: unit tests only)
#
# Every test runs on the host's Redis 7.0. The version tests (ctest label "version") run again on each server that
# SLOTSHIFT_TEST_SERVERS names, space-separated: by default all of redis-8.0 valkey-8.0 valkey-8.1 valkey-9.1;
# SLOTSHIFT_TEST_SERVERS= (empty) runs none. Their Debian roots are built on first use (deploy/local/server-root.sh,
# about a minute each, cached outside the repository).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

preset=default
ctest_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --preset) preset=$2; shift 2 ;;
    --) shift; ctest_args=("$@"); break ;;
    *) echo "usage: tests/run.sh [--preset default|asan|tsan] [-- ctest args]" >&2; exit 2 ;;
  esac
done

servers=${SLOTSHIFT_TEST_SERVERS-redis-8.0 valkey-8.0 valkey-8.1 valkey-9.1}

# What this run is about to do that takes time, said before it starts (rough figures for 2 cores).
missing=$(deploy/local/install-deps.sh --list | tr '\n' ' ')
roots=()
for s in $servers; do deploy/local/server-root.sh "$s" --check || roots+=("$s"); done
echo "tests/run.sh: the plan" >&2
[ -n "$missing" ] && echo "  install Debian packages: $missing(about 2 min)" >&2
js_clients=tests/integration/js-clients
[ -d $js_clients/node_modules/ioredis ] && [ -d $js_clients/node_modules/redis ] ||
  echo "  install the JavaScript test clients from npm (about 10 s)" >&2
k8s_validate=tests/integration/k8s-validate
[ -d $k8s_validate/node_modules/kubernetes-models ] ||
  echo "  install the Kubernetes manifest validator from npm (about 5 s)" >&2
[ ${#roots[@]} -gt 0 ] &&
  echo "  build the Debian roots of ${roots[*]}, side by side (about 2 min, 300 MB each)" >&2
[ "$preset" != default ] || deploy/image/build.sh --check ||
  echo "  build the image's Debian root, in the image test (about a minute, 120 MB)" >&2
build_dir=build
[ "$preset" = default ] || build_dir=build-$preset
[ -f "$build_dir/CMakeCache.txt" ] ||
  echo "  build slotshift ($preset preset) from nothing (about 4 min)" >&2
echo "  run the tests: every test on Redis 7.0${servers:+, the version tests on $servers} (about 14 min;" \
  "longer under asan)" >&2

# Every package first, once: nothing after this line calls apt, so the roots can be built side by side.
deploy/local/install-deps.sh
# ioredis and node-redis for the client tests, at the versions package-lock.json pins (again when one is missing:
# a checkout from before node-redis joined has ioredis alone).
if [ ! -d $js_clients/node_modules/ioredis ] || [ ! -d $js_clients/node_modules/redis ]; then
  (cd $js_clients && npm ci --no-audit --no-fund --loglevel=error)
fi
# The offline validator of deploy/k8s (kubernetes-models and the ServiceMonitor's model), as its lock file pins.
[ -d $k8s_validate/node_modules/kubernetes-models ] ||
  (cd $k8s_validate && npm ci --no-audit --no-fund --loglevel=error)
# The roots, side by side (each mostly waits for the mirror), before any test needs one. Each says on stderr
# why it failed, its log's last lines included.
pids=()
for s in $servers; do
  deploy/local/server-root.sh "$s" >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || { echo "tests/run.sh: a server root could not be built (see above)" >&2; exit 1; }
done
jobs=$(nproc)
cmake --preset "$preset" -DSLOTSHIFT_TEST_SERVERS="$(echo $servers | tr ' ' ';')" >/dev/null
cmake --build --preset "$preset" -j "$jobs"
# The integration tests start real redis-server clusters. One test more than there are cores: they wait on servers,
# timers and deadlines more than they compute (a clean run at -j 2 on 2 cores kept 1.06 cores busy on average), and
# the test that measures time against its neighbours runs alone (proxy_hostile_it, RUN_SERIAL).
ctest --preset "$preset" -j "$((jobs + 1))" --timeout 900 "${ctest_args[@]}"
