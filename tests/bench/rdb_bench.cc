// How fast does rdb::Reader go through a snapshot? A move reads a 40-120 MB RDB from the source while the
// source buffers the write stream for it, so the reader must keep up with a fast network and leave the CPU to
// the rest of the move.
//
// The input is an RDB of 1,000,000 string keys with 100-byte incompressible values (about 115 MB), written by
// a real redis-server and fetched with `redis-cli --rdb` (generated on first use and kept in /tmp, or given
// as the first argument). It is fed from memory in 64 KB reads, as a socket would deliver it, and read:
//   crc64        the checksum alone over the whole file (the floor: every byte must pass through it)
//   all wanted   every value kept (copied out of the read buffer)
//   1/3 wanted   values kept for keys whose slot is 0 mod 3 (the slot computed for every key), others walked
//   none wanted  every value walked
// Prints the median of 5 runs per row: MB/s of RDB and keys/s.
//
//   taskset -c 1 build/tests/bench/rdb_bench [FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/crc64.h"
#include "common/rdb.h"
#include "common/slot.h"

using namespace slotshift;

namespace {

constexpr std::size_t kReadSize = 64 * 1024;
constexpr int kRuns = 5;

// Writes 1,000,000 keys into a redis-server on a Unix socket in a temporary directory and saves its RDB as a
// replica receives it.
bool generate(const std::string& path) {
  const std::string script = R"SH(
set -e
dir=$(mktemp -d /tmp/rdb-bench.XXXXXX)
trap 'redis-cli -s "$dir/sock" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port 0 --unixsocket "$dir/sock" --dir "$dir" --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/pid" --logfile "$dir/log"
for i in $(seq 1 100); do redis-cli -s "$dir/sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
/usr/bin/python3 - <<'PY' | redis-cli -s "$dir/sock" --pipe >/dev/null
import random, sys
rnd = random.Random(1)
out = sys.stdout.buffer
for i in range(1000000):
    k = b"key:%07d" % i
    v = rnd.randbytes(100)
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(k), k, v))
PY
redis-cli -s "$dir/sock" --rdb ")SH" +
                             path + R"SH(" >/dev/null 2>&1
)SH";
  std::fprintf(stderr, "generating %s (1,000,000 keys of 100 bytes) with redis-server...\n", path.c_str());
  FILE* shell = ::popen("bash -s", "w");
  if (!shell) return false;
  std::fputs(script.c_str(), shell);
  return ::pclose(shell) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Row {
  double mb_s;
  double keys_s;
  std::size_t keys;
  std::size_t kept;
};

Row run(const std::string& rdb, const std::function<bool(int, std::string_view)>& want) {
  std::vector<double> secs;
  std::size_t keys = 0, kept = 0;
  for (int r = 0; r < kRuns; ++r) {
    rdb::MemorySource src(rdb, kReadSize);
    rdb::Reader reader(src);
    rdb::Entry e;
    keys = kept = 0;
    const auto t0 = std::chrono::steady_clock::now();
    if (!reader.read_header()) {
      std::fprintf(stderr, "%s\n", reader.error().c_str());
      std::exit(1);
    }
    rdb::Result res;
    while ((res = reader.next(e, want)) == rdb::Result::kEntry) {
      ++keys;
      kept += e.kept;
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (res != rdb::Result::kEnd) {
      std::fprintf(stderr, "%s\n", reader.error().c_str());
      std::exit(1);
    }
    secs.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  const double s = secs[kRuns / 2];
  return {static_cast<double>(rdb.size()) / s / 1e6, static_cast<double>(keys) / s, keys, kept};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "/tmp/slotshift-rdb-bench-1m.rdb";
  if (!std::ifstream(path).good() && (argc > 1 || !generate(path))) {
    std::fprintf(stderr, "no RDB at %s\n", path.c_str());
    return 1;
  }
  const std::string rdb = read_file(path);
  std::printf("%s: %.1f MB\n\n", path.c_str(), static_cast<double>(rdb.size()) / 1e6);
  std::printf("%-14s %10s %12s %10s %10s\n", "", "MB/s", "keys/s", "keys", "kept");

  std::vector<double> secs;
  for (int r = 0; r < kRuns; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile std::uint64_t sink = crc64(0, rdb);
    (void)sink;
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  std::printf("%-14s %10.0f %12s %10s %10s\n", "crc64",
              static_cast<double>(rdb.size()) / secs[kRuns / 2] / 1e6, "-", "-", "-");

  const auto print = [](const char* name, const Row& row) {
    std::printf("%-14s %10.0f %12.0f %10zu %10zu\n", name, row.mb_s, row.keys_s, row.keys, row.kept);
  };
  print("all wanted", run(rdb, [](int, std::string_view) { return true; }));
  print("1/3 wanted", run(rdb, [](int, std::string_view key) { return key_slot(key) % 3 == 0; }));
  print("none wanted", run(rdb, [](int, std::string_view) { return false; }));
  return 0;
}
