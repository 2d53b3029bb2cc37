#!/usr/bin/env bash
# Builds the seed corpus of rdb_fuzz from the captured RDB files: each file four times, behind a first byte that
# picks the read size (1, 7 and 64 bytes, and all at once).
#
#   tests/fuzz/seed_rdb.sh DIR
set -euo pipefail
out=${1:?usage: seed_rdb.sh DIR}
data=$(cd "$(dirname "$0")/../data/rdb" && pwd)
mkdir -p "$out"
for f in "$data"/*.rdb; do
  for b in 00 06 3f f0; do
    { printf "\\x$b"; cat "$f"; } >"$out/$(basename "$f" .rdb)-$b"
  done
done
echo "$(ls "$out" | wc -l) seeds in $out"
