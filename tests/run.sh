#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, configures, builds, and runs every unit and integration
# test through ctest. Exits non-zero on any failure.
#
#   tests/run.sh                    the default build (RelWithDebInfo, warnings as errors)
#   tests/run.sh --preset asan      AddressSanitizer + UndefinedBehaviorSanitizer build
#   tests/run.sh -- -L unit         extra arguments after -- go to ctest (here: unit tests only)
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

deploy/local/install-deps.sh
# ioredis for the client tests, at the version package-lock.json pins.
if [ ! -d tests/integration/ioredis/node_modules/ioredis ]; then
  (cd tests/integration/ioredis && npm ci --no-audit --no-fund --loglevel=error)
fi
jobs=$(nproc)
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$jobs"
# The integration tests start real redis-server clusters; two at a time fit 2 cores comfortably.
ctest --preset "$preset" -j "$jobs" --timeout 900 "${ctest_args[@]}"
