// Counters of one worker. Each is written by its worker's thread only and read by whoever builds INFO, so a
// relaxed load and store are enough (no locked instruction on the hot path) and the readers see a recent
// value.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

namespace slotshift::proxy {

class Counter {
 public:
  void add(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  void set(std::uint64_t n) { v_.store(n, std::memory_order_relaxed); }
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
  Counter errors_reordered;    // not sent again: a later command of the client for its slot already ran
  Counter moved;               // MOVED replies met
  Counter ask;                 // ASK replies met
  Counter tryagain;            // TRYAGAIN replies met
  Counter clusterdown;         // CLUSTERDOWN replies met
  Counter noreplicas;          // NOREPLICAS replies met
  Counter retries;             // requests sent again (after a redirect, a backoff or a lost connection)
  Counter topology_refreshes;  // slot map reloads
  Counter replica_reads;       // read-only commands sent to a replica (--read-from)
  Counter replica_fallbacks;   // ... sent to the master: no replica usable (--read-from prefer-replica)
  Counter clients_connected;
  Counter clients_accepted;
  Counter clients_rejected;     // over max-clients
  Counter clients_slow_reader;  // disconnected for an output buffer over the limit
  Counter clients_idle;         // disconnected for idleness
  Counter backend_connects;
  Counter backend_failures;
  // Slot holds. The first four are the process's (HoldRegistry's, written under its lock); the last three
  // each worker's own.
  Counter holds_placed;        // HOLD calls accepted (placed or extended a hold)
  Counter holds_expired;       // holds ended by their ttl, not by a RELEASE
  Counter holds_current;       // gauge
  Counter hold_longest_ms;     // gauge: longest hold so far, placement to release or expiry
  Counter requests_held;       // requests kept back for a held slot (or behind one of their client's)
  Counter held_requests;       // gauge: requests kept back now
  Counter held_request_bytes;  // gauge: their size, as counted against max-held-bytes
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

// Every counter once, with the name INFO and /metrics give it, so that the two never drift apart.
struct CounterInfo {
  std::string_view section;  // INFO section: "clients" or "proxy"
  std::string_view name;
  Counter Stats::*member;
  std::string_view help;
  bool gauge = false;
};

inline constexpr CounterInfo kCounters[] = {
    {"clients", "connected_clients", &Stats::clients_connected, "client connections open now", true},
    {"clients", "total_connections_received", &Stats::clients_accepted, "client connections accepted"},
    {"clients", "rejected_connections", &Stats::clients_rejected,
     "client connections refused over max-clients"},
    {"clients", "disconnected_slow_readers", &Stats::clients_slow_reader,
     "clients closed for unread replies over max-client-output-bytes"},
    {"clients", "disconnected_idle", &Stats::clients_idle, "clients closed after idle-timeout"},
    {"proxy", "total_commands_processed", &Stats::requests, "client commands"},
    {"proxy", "commands_answered_locally", &Stats::local_replies, "commands the proxy answered itself"},
    {"proxy", "commands_split_or_fanned_out", &Stats::split_requests,
     "commands split by slot or sent to every master"},
    {"proxy", "errors_protocol", &Stats::errors_protocol, "malformed client input (connection closed)"},
    {"proxy", "errors_timeout", &Stats::errors_timeout, "requests answered with a timeout error"},
    {"proxy", "errors_backend_lost", &Stats::errors_backend, "writes lost with their backend connection"},
    {"proxy", "errors_crossslot", &Stats::errors_crossslot, "multi-key commands refused with CROSSSLOT"},
    {"proxy", "errors_refused", &Stats::errors_refused, "administrative or unsupported commands refused"},
    {"proxy", "errors_not_retried", &Stats::errors_reordered,
     "errors passed on rather than retried, since a later command of the client for the slot already ran"},
    {"proxy", "redirects_moved", &Stats::moved, "MOVED replies met and followed"},
    {"proxy", "redirects_ask", &Stats::ask, "ASK replies met and followed"},
    {"proxy", "redirects_tryagain", &Stats::tryagain, "TRYAGAIN replies met and retried"},
    {"proxy", "redirects_clusterdown", &Stats::clusterdown, "CLUSTERDOWN replies met and retried"},
    {"proxy", "refusals_noreplicas", &Stats::noreplicas,
     "NOREPLICAS replies met (writes refused by a master)"},
    {"proxy", "retries", &Stats::retries, "requests sent again"},
    {"proxy", "topology_refreshes", &Stats::topology_refreshes, "slot map reloads"},
    {"proxy", "replica_reads", &Stats::replica_reads, "read-only commands sent to a replica (--read-from)"},
    {"proxy", "replica_reads_on_master", &Stats::replica_fallbacks,
     "read-only commands sent to the master since no replica of its shard was usable (--read-from "
     "prefer-replica)"},
    {"proxy", "backend_connections_opened", &Stats::backend_connects, "connections opened to cluster nodes"},
    {"proxy", "backend_failures", &Stats::backend_failures, "backend connections lost or refused"},
    {"proxy", "holds_placed", &Stats::holds_placed, "slot holds placed or extended on the admin endpoint"},
    {"proxy", "holds_expired", &Stats::holds_expired,
     "slot holds that ended by their ttl instead of a release"},
    {"proxy", "holds_current", &Stats::holds_current, "slot holds in place now", true},
    {"proxy", "hold_longest_ms", &Stats::hold_longest_ms,
     "longest slot hold so far, from placement to release or expiry, in ms", true},
    {"proxy", "requests_held", &Stats::requests_held,
     "requests kept back for a held slot or behind an earlier held command of their client"},
    {"proxy", "held_requests", &Stats::held_requests, "requests kept back for a slot hold now", true},
    {"proxy", "held_request_bytes", &Stats::held_request_bytes,
     "bytes of requests kept back now, counted against max-held-bytes", true},
};
inline constexpr std::size_t kCounterCount = sizeof(kCounters) / sizeof(kCounters[0]);

// The sum over every worker at one moment (each counter read once; they move independently).
struct Totals {
  std::array<std::uint64_t, kCounterCount> counters{};
  std::array<std::uint64_t, kLatencyBuckets> latency{};

  void add(const Stats& s) {
    for (std::size_t i = 0; i < kCounterCount; ++i)
      counters[i] += (s.*kCounters[i].member).get();
    for (std::size_t b = 0; b < kLatencyBuckets; ++b)
      latency[b] += s.latency_us[b].get();
  }
  // The upper bound, in microseconds, of the bucket holding the q-quantile (0 with no samples).
  std::uint64_t latency_quantile_us(double q) const {
    std::uint64_t total = 0;
    for (auto c : latency)
      total += c;
    if (total == 0) return 0;
    const auto want = static_cast<std::uint64_t>(q * static_cast<double>(total));
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < kLatencyBuckets; ++b) {
      seen += latency[b];
      if (seen > want) return bucket_bound_us(b);
    }
    return bucket_bound_us(kLatencyBuckets - 1);
  }
  static std::uint64_t bucket_bound_us(std::size_t b) { return b == 0 ? 1 : (1ull << b); }
};

}  // namespace slotshift::proxy
