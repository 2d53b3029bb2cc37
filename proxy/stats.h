// Counters of one worker. Each is written by its worker's thread only and read by whoever builds INFO, so a
// relaxed load and store are enough (no locked instruction on the hot path) and the readers see a recent
// value.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace slotshift::proxy {

class Counter {
 public:
  void add(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  std::uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

// Request latency in the proxy, from a request's parse to its reply being queued for the client, in buckets
// of powers of two microseconds: [0,1) [1,2) [2,4) ... [2^26, inf).
inline constexpr std::size_t kLatencyBuckets = 28;

struct Stats {
  Counter requests;            // client commands
  Counter local_replies;       // answered by the proxy itself
  Counter split_requests;      // split by slot or fanned out to every master
  Counter errors_protocol;     // malformed client input (the client is disconnected)
  Counter errors_timeout;      // deadline passed
  Counter errors_backend;      // lost connection after a non-idempotent command was sent
  Counter errors_crossslot;    // multi-key commands that cannot be split
  Counter errors_refused;      // administrative or unsupported commands
  Counter moved;               // MOVED replies met
  Counter ask;                 // ASK replies met
  Counter tryagain;            // TRYAGAIN replies met
  Counter clusterdown;         // CLUSTERDOWN replies met
  Counter retries;             // requests sent again (after a redirect, a backoff or a lost connection)
  Counter topology_refreshes;  // slot map reloads
  Counter clients_connected;
  Counter clients_accepted;
  Counter clients_rejected;     // over max-clients
  Counter clients_slow_reader;  // disconnected for an output buffer over the limit
  Counter clients_idle;         // disconnected for idleness
  Counter backend_connects;
  Counter backend_failures;
  std::array<Counter, kLatencyBuckets> latency_us;

  void record_latency(std::uint64_t us) {
    std::size_t b = 0;
    while (us > 0 && b + 1 < kLatencyBuckets) {
      us >>= 1;
      ++b;
    }
    latency_us[b].add();
  }
};

}  // namespace slotshift::proxy
