// INFO through the proxy: one Redis's answer for the whole cluster. The sections the nodes know (the server's
// version, memory, stats, keyspace) come from every master's own INFO, merged here; the sections about the
// proxy itself (its clients, its counters) come from the proxy. No socket and no event loop here, so that the
// merge rules are tested on their own (tests/unit/info_merge_test.cc).
//
// How each field of the masters' sections becomes one field:
// - server: only redis_version, the oldest among the masters (compared number by number, so 7.10 is newer
//   than 7.9): what a client may rely on is what every master supports.
// - keyspace: per database, keys, expires and any other count summed; avg_ttl is the average of the masters'
//   avg_ttl weighted by their `expires` (each is itself an average over that master's keys with a TTL),
//   leaving out masters that report 0 (no key with a TTL sampled yet), and 0 when none reports one.
// - memory and stats, numbers: summed (the cluster's memory, its rates: instantaneous_ops_per_sec and the
//   kbps fields add up), except
//   - `X_human`: written again from the merged X, as Redis writes it (used_memory_human, maxmemory_human,
//   ...);
//   - ratios written again from the summed amounts they divide: mem_fragmentation_ratio (used_memory_rss /
//     used_memory), allocator_frag_ratio, allocator_rss_ratio, rss_overhead_ratio, used_memory_peak_perc,
//     used_memory_dataset_perc; any other `_ratio` or `_perc` field is the masters' mean;
//   - the largest value, for what is a peak or a state rather than an amount: latest_fork_usec,
//     total_system_memory (masters may share a machine), active_defrag_running,
//     current_eviction_exceeded_time, current_active_defrag_time;
//   - the proxy's own value, for what the proxy counts as a single Redis would: total_connections_received,
//     rejected_connections and total_commands_processed are its clients' connections and commands.
//   A peak summed (used_memory_peak) is the sum of each master's peak, not the peak of the sum.
// - memory and stats, text (mem_allocator, maxmemory_policy): the value when every master agrees, else their
//   distinct values joined by commas.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace slotshift::proxy::info_merge {

// The sections the proxy answers, as bits; printed in Redis's order (proxy last).
enum Section : unsigned {
  kServer = 1u << 0,
  kClients = 1u << 1,
  kMemory = 1u << 2,
  kStats = 1u << 3,
  kKeyspace = 1u << 4,
  kProxy = 1u << 5,
};
inline constexpr unsigned kAll = kServer | kClients | kMemory | kStats | kKeyspace | kProxy;

// Which sections `INFO <args>` asks for, read as Redis 7 reads them: no argument is "default"; "default",
// "all" and "everything" name every section the proxy has; names are case-insensitive; names of sections the
// proxy does not answer (replication, cpu, commandstats, ...) give nothing, as an unknown section does on
// Redis.
unsigned sections_of(std::span<const std::string_view> args);

// The sections to ask every master for (server for redis_version): empty when the proxy answers alone.
std::vector<std::string> node_sections(unsigned sections);

// What the proxy contributes, made when the command arrives.
struct Plan {
  unsigned sections = 0;
  std::string server;   // the proxy's own lines of # Server (after redis_version), each ending in CRLF
  std::string clients;  // the lines of # Clients
  std::string proxy;    // the lines of # Proxy
  // Fields of # Stats that the proxy answers for itself, in place of the masters' sum.
  std::vector<std::pair<std::string, std::string>> own_stats;
};

// The INFO text for `plan`, from every master's INFO text (the bulk string's contents, one per master; none
// when node_sections() is empty). False and `error` when a master's answer lacks what was asked (no
// redis_version).
bool compose(const Plan& plan, std::span<const std::string_view> node_texts, std::string& out,
             std::string& error);

// Pieces, for the tests.
// The oldest of `versions` ("7.0.15" < "7.2.4" < "7.10.0"); "" for none.
std::string oldest_version(std::span<const std::string_view> versions);
// Bytes as Redis writes them in `_human` fields: "1023B", "1.00K", "1.50M", "2.00G", ...
std::string bytes_to_human(std::uint64_t bytes);
// One keyspace line's value merged: "keys=3,expires=1,avg_ttl=100" from each master's.
std::string merge_keyspace(std::span<const std::string_view> values);

}  // namespace slotshift::proxy::info_merge
