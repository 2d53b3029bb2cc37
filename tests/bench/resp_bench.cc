// Where does hiredis's reader serve, and where does a scanner that only finds boundaries (and argument
// positions) pay? Each workload is parsed by:
//   hiredis      redisReader with its default reply objects (every bulk copied into a malloc'd redisReply)
//   hiredis-nofn redisReader with no object functions (it still copies the input into its own buffer)
//   scan         resp::Scanner: boundaries and, for requests, argument slices; nothing copied
//   scan+decode  resp::Scanner, then resp::decode into a Value tree (what the proxy does for replies it
//   merges)
// Input is handed over in 16 KB reads, as a socket would deliver it. Prints the median of 7 runs per cell.
//
//   taskset -c 1 build/tests/bench/resp_bench
#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "common/resp.h"

using namespace slotshift;

namespace {

constexpr std::size_t kReadSize = 16 * 1024;

struct Workload {
  std::string name;
  std::string wire;
  std::size_t messages;
  resp::Scanner::Mode mode;
};

std::vector<Workload> workloads() {
  std::vector<Workload> out;
  const std::string value(100, 'v');
  {
    Workload w{"SET requests, 100 B values", {}, 20000, resp::Scanner::Mode::kRequest};
    for (std::size_t i = 0; i < w.messages; ++i)
      resp::append_command(w.wire, {"SET", "key:" + std::to_string(i), value});
    out.push_back(std::move(w));
  }
  {
    Workload w{"GET replies, 100 B bulk", {}, 20000, resp::Scanner::Mode::kReply};
    for (std::size_t i = 0; i < w.messages; ++i)
      resp::append_bulk(w.wire, value);
    out.push_back(std::move(w));
  }
  {
    Workload w{"MGET replies, 100 x 100 B", {}, 1000, resp::Scanner::Mode::kReply};
    for (std::size_t i = 0; i < w.messages; ++i) {
      resp::append_array_header(w.wire, 100);
      for (int j = 0; j < 100; ++j)
        resp::append_bulk(w.wire, value);
    }
    out.push_back(std::move(w));
  }
  {
    Workload w{"+OK / :n small replies", {}, 50000, resp::Scanner::Mode::kReply};
    for (std::size_t i = 0; i < w.messages; ++i) {
      if (i % 2) {
        resp::append_simple(w.wire, "OK");
      } else {
        resp::append_integer(w.wire, static_cast<std::int64_t>(i));
      }
    }
    out.push_back(std::move(w));
  }
  {
    Workload w{"one 8 MB SET request", {}, 1, resp::Scanner::Mode::kRequest};
    resp::append_command(w.wire, {"SET", "big", std::string(8 << 20, 'x')});
    out.push_back(std::move(w));
  }
  return out;
}

// hiredis: feed reads, pull replies.
std::size_t run_hiredis(const Workload& w, bool objects) {
  redisReader* reader = objects ? redisReaderCreate() : redisReaderCreateWithFunctions(nullptr);
  reader->maxbuf = 0;  // never shrink the buffer: give hiredis its best case
  std::size_t got = 0;
  for (std::size_t off = 0; off < w.wire.size(); off += kReadSize) {
    const std::size_t n = std::min(kReadSize, w.wire.size() - off);
    redisReaderFeed(reader, w.wire.data() + off, n);
    void* reply = nullptr;
    while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply) {
      if (objects) freeReplyObject(reply);
      ++got;
    }
  }
  redisReaderFree(reader);
  return got;
}

// The scanner over a growing buffer, as a connection would keep it: bytes are appended per read and consumed
// messages are dropped from the front once per read.
std::size_t run_scanner(const Workload& w, bool decode) {
  resp::Scanner scanner(w.mode);
  std::string buf;
  std::size_t got = 0, sink = 0;
  for (std::size_t off = 0; off < w.wire.size(); off += kReadSize) {
    if (scanner.size_hint() > buf.capacity()) buf.reserve(scanner.size_hint());
    buf.append(w.wire, off, std::min(kReadSize, w.wire.size() - off));
    std::size_t start = 0;
    while (true) {
      const std::string_view view = std::string_view(buf).substr(start);
      const auto st = scanner.scan(view);
      if (st != resp::Status::kComplete) break;
      if (w.mode == resp::Scanner::Mode::kRequest) {
        sink += scanner.arg(view, 0).size();
      } else if (decode) {
        sink += resp::decode(view.substr(0, scanner.size())).elements.size();
      }
      start += scanner.size();
      scanner.reset();
      ++got;
    }
    buf.erase(0, start);
  }
  if (sink == 42) std::puts("");  // keep the work observable
  return got;
}

double median_ns_per_message(const Workload& w, const std::function<std::size_t(const Workload&)>& fn) {
  std::vector<double> runs;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t got = fn(w);
    const auto t1 = std::chrono::steady_clock::now();
    if (got != w.messages) {
      std::fprintf(stderr, "%s: parsed %zu of %zu messages\n", w.name.c_str(), got, w.messages);
      std::exit(1);
    }
    runs.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() /
                   static_cast<double>(w.messages));
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main() {
  std::printf("%-30s %12s %12s %12s %12s   %s\n", "workload (ns per message)", "hiredis", "hiredis-nofn",
              "scan", "scan+decode", "scan MB/s");
  for (const auto& w : workloads()) {
    const double h = median_ns_per_message(w, [](const Workload& x) { return run_hiredis(x, true); });
    const double hn = median_ns_per_message(w, [](const Workload& x) { return run_hiredis(x, false); });
    const double s = median_ns_per_message(w, [](const Workload& x) { return run_scanner(x, false); });
    const double sd = w.mode == resp::Scanner::Mode::kReply
                          ? median_ns_per_message(w, [](const Workload& x) { return run_scanner(x, true); })
                          : 0;
    const double mbps = static_cast<double>(w.wire.size()) / (s * static_cast<double>(w.messages)) * 1e3;
    std::printf("%-30s %12.1f %12.1f %12.1f %12s   %.0f\n", w.name.c_str(), h, hn, s,
                sd > 0 ? std::to_string(static_cast<int>(sd)).c_str() : "-", mbps);
  }
  return 0;
}
