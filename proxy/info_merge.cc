#include "proxy/info_merge.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "common/ascii.h"

namespace slotshift::proxy::info_merge {
namespace {

using Fields = std::vector<std::pair<std::string_view, std::string_view>>;

// An INFO text's sections by lower-case name, each with its fields in order.
std::map<std::string, Fields> parse(std::string_view text) {
  std::map<std::string, Fields> sections;
  Fields* current = nullptr;
  while (!text.empty()) {
    const auto eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (line[0] == '#') {
      line.remove_prefix(1);
      while (!line.empty() && line.front() == ' ')
        line.remove_prefix(1);
      current = &sections[ascii_lowered(line)];
      continue;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos || !current) continue;
    current->emplace_back(line.substr(0, colon), line.substr(colon + 1));
  }
  return sections;
}

// A number as INFO writes one: an integer, or a decimal ("0.95"); a `_perc` field's "12.34%" counts too.
struct Number {
  double value = 0;
  std::int64_t integer = 0;
  bool is_integer = false;
};
std::optional<Number> number(std::string_view s) {
  if (!s.empty() && s.back() == '%') s.remove_suffix(1);
  if (s.empty()) return std::nullopt;
  Number n;
  const char* end = s.data() + s.size();
  if (auto [p, ec] = std::from_chars(s.data(), end, n.integer); ec == std::errc() && p == end) {
    n.is_integer = true;
    n.value = static_cast<double>(n.integer);
    return n;
  }
  // Only plain decimals: "inf", "nan" and hex are text.
  if (s.find_first_not_of("-0123456789.") != std::string_view::npos) return std::nullopt;
  if (auto [p, ec] = std::from_chars(s.data(), end, n.value); ec == std::errc() && p == end) return n;
  return std::nullopt;
}

std::string two_decimals(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.ends_with(suffix);
}

// Peaks and states: the largest master's value.
constexpr std::string_view kMaxFields[] = {"latest_fork_usec", "total_system_memory", "active_defrag_running",
                                           "current_eviction_exceeded_time", "current_active_defrag_time"};

// Ratios of amounts that are themselves summed: numerator, denominator, and whether it is a percentage.
struct Ratio {
  std::string_view name, numerator, denominator;
  bool percent;
};
constexpr Ratio kRatios[] = {
    {"mem_fragmentation_ratio", "used_memory_rss", "used_memory", false},
    {"allocator_frag_ratio", "allocator_active", "allocator_allocated", false},
    {"allocator_rss_ratio", "allocator_resident", "allocator_active", false},
    {"rss_overhead_ratio", "used_memory_rss", "allocator_resident", false},
    {"used_memory_peak_perc", "used_memory", "used_memory_peak", true},
};

// One section (memory or stats) of every master merged, field by field, in the order the fields first appear.
std::string merge_section(std::span<const Fields* const> nodes,
                          const std::vector<std::pair<std::string, std::string>>& own) {
  std::vector<std::string_view> order;
  std::map<std::string_view, std::vector<std::string_view>> values;
  for (const Fields* f : nodes) {
    if (!f) continue;
    for (const auto& [k, v] : *f) {
      auto& vs = values[k];
      if (vs.empty()) order.push_back(k);
      vs.push_back(v);
    }
  }
  // First the plain amounts (what ratios and `_human` fields are made of), then every field in order.
  std::map<std::string_view, double> amounts;
  auto amount = [&amounts](std::string_view k) -> std::optional<double> {
    const auto it = amounts.find(k);
    if (it == amounts.end()) return std::nullopt;
    return it->second;
  };
  std::map<std::string_view, std::string> merged;
  for (auto k : order) {
    const auto& vs = values[k];
    if (const auto it = std::find_if(own.begin(), own.end(), [k](const auto& o) { return o.first == k; });
        it != own.end()) {
      merged[k] = it->second;
      continue;
    }
    if (ends_with(k, "_human") || ends_with(k, "_ratio") || ends_with(k, "_perc")) continue;  // below
    std::vector<Number> ns;
    for (auto v : vs) {
      if (auto n = number(v)) ns.push_back(*n);
    }
    if (ns.size() != vs.size()) {
      // Text: the value when every master agrees, else their distinct values.
      std::vector<std::string_view> distinct;
      for (auto v : vs)
        if (std::find(distinct.begin(), distinct.end(), v) == distinct.end()) distinct.push_back(v);
      std::string joined;
      for (auto v : distinct) {
        if (!joined.empty()) joined += ',';
        joined += v;
      }
      merged[k] = joined;
      continue;
    }
    const bool integers = std::all_of(ns.begin(), ns.end(), [](const Number& n) { return n.is_integer; });
    const bool take_max = std::find(std::begin(kMaxFields), std::end(kMaxFields), k) != std::end(kMaxFields);
    if (integers) {
      std::int64_t r = take_max ? ns.front().integer : 0;
      for (const auto& n : ns)
        r = take_max ? std::max(r, n.integer) : r + n.integer;
      merged[k] = std::to_string(r);
      amounts[k] = static_cast<double>(r);
    } else {
      double r = take_max ? ns.front().value : 0;
      for (const auto& n : ns)
        r = take_max ? std::max(r, n.value) : r + n.value;
      merged[k] = two_decimals(r);
      amounts[k] = r;
    }
  }
  for (auto k : order) {
    if (merged.contains(k)) continue;
    const auto& vs = values[k];
    if (ends_with(k, "_human")) {
      const auto base = amount(k.substr(0, k.size() - 6));
      if (base && *base >= 0) {
        merged[k] = bytes_to_human(static_cast<std::uint64_t>(*base));
      } else {
        merged[k] = vs.front();
      }
      continue;
    }
    // used_memory_peak_perc is written "50.00%", expired_stale_perc "50.00": as the masters write it.
    const bool percent = vs.front().ends_with('%');
    std::optional<double> r;
    if (const auto* ratio =
            std::find_if(std::begin(kRatios), std::end(kRatios), [k](const Ratio& x) { return x.name == k; });
        ratio != std::end(kRatios)) {
      const auto num = amount(ratio->numerator), den = amount(ratio->denominator);
      if (num && den && *den > 0) r = *num / *den * (ratio->percent ? 100.0 : 1.0);
    } else if (k == "used_memory_dataset_perc") {
      // As Redis: the dataset's share of what the server allocated beyond its start-up memory.
      const auto dataset = amount("used_memory_dataset"), used = amount("used_memory"),
                 startup = amount("used_memory_startup");
      if (dataset && used && startup) r = *dataset * 100.0 / (*used > *startup ? *used - *startup : 1.0);
    }
    if (!r) {
      // Any other ratio or percentage: the masters' mean.
      double sum = 0;
      std::size_t n = 0;
      for (auto v : vs) {
        if (auto x = number(v)) {
          sum += x->value;
          ++n;
        }
      }
      if (n == vs.size() && n > 0) r = sum / static_cast<double>(n);
    }
    merged[k] = r ? two_decimals(*r) + (percent ? "%" : "") : std::string(vs.front());
  }
  std::string out;
  for (auto k : order) {
    out.append(k);
    out.push_back(':');
    out.append(merged[k]);
    out.append("\r\n");
  }
  return out;
}

std::string merge_keyspaces(std::span<const Fields* const> nodes) {
  // By database number, so that db10 follows db9 as on Redis.
  std::map<long, std::pair<std::string_view, std::vector<std::string_view>>> dbs;
  for (const Fields* f : nodes) {
    if (!f) continue;
    for (const auto& [k, v] : *f) {
      long n = 0;
      if (!k.starts_with("db")) continue;
      const auto [p, ec] = std::from_chars(k.data() + 2, k.data() + k.size(), n);
      if (ec != std::errc() || p != k.data() + k.size()) continue;
      auto& db = dbs[n];
      db.first = k;
      db.second.push_back(v);
    }
  }
  std::string out;
  for (const auto& [n, db] : dbs) {
    out.append(db.first);
    out.push_back(':');
    out.append(merge_keyspace(db.second));
    out.append("\r\n");
  }
  return out;
}

}  // namespace

unsigned sections_of(std::span<const std::string_view> args) {
  if (args.empty()) return kAll;
  unsigned s = 0;
  for (auto a : args) {
    const std::string name = ascii_lowered(a);
    if (name == "default" || name == "all" || name == "everything") s |= kAll;
    if (name == "server") s |= kServer;
    if (name == "clients") s |= kClients;
    if (name == "memory") s |= kMemory;
    if (name == "stats") s |= kStats;
    if (name == "keyspace") s |= kKeyspace;
    if (name == "proxy") s |= kProxy;
  }
  return s;
}

std::vector<std::string> node_sections(unsigned sections) {
  std::vector<std::string> out;
  if (sections & kServer) out.emplace_back("server");
  if (sections & kMemory) out.emplace_back("memory");
  if (sections & kStats) out.emplace_back("stats");
  if (sections & kKeyspace) out.emplace_back("keyspace");
  return out;
}

std::string oldest_version(std::span<const std::string_view> versions) {
  auto parts = [](std::string_view v) {
    std::vector<long> out;
    while (!v.empty()) {
      long n = 0;
      const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      out.push_back(ec == std::errc() ? n : 0);
      const auto dot = v.find('.');
      if (dot == std::string_view::npos) break;
      v.remove_prefix(dot + 1);
    }
    return out;
  };
  std::string_view oldest;
  for (auto v : versions) {
    if (oldest.empty() || parts(v) < parts(oldest)) oldest = v;
  }
  return std::string(oldest);
}

std::string bytes_to_human(std::uint64_t n) {
  // Redis's bytesToHuman.
  char buf[64];
  const double d = static_cast<double>(n);
  constexpr double k = 1024.0;
  if (n < 1024) {
    std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(n));
  } else if (d < k * k) {
    std::snprintf(buf, sizeof buf, "%.2fK", d / k);
  } else if (d < k * k * k) {
    std::snprintf(buf, sizeof buf, "%.2fM", d / (k * k));
  } else if (d < k * k * k * k) {
    std::snprintf(buf, sizeof buf, "%.2fG", d / (k * k * k));
  } else if (d < k * k * k * k * k) {
    std::snprintf(buf, sizeof buf, "%.2fT", d / (k * k * k * k));
  } else if (d < k * k * k * k * k * k) {
    std::snprintf(buf, sizeof buf, "%.2fP", d / (k * k * k * k * k));
  } else {
    std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(n));
  }
  return buf;
}

std::string merge_keyspace(std::span<const std::string_view> values) {
  std::vector<std::string> order;
  std::map<std::string, std::int64_t> sums;
  double ttl_weighted = 0;
  std::int64_t ttl_weight = 0;
  for (auto value : values) {
    std::int64_t expires = 0, avg_ttl = 0;
    while (!value.empty()) {
      const auto comma = value.find(',');
      const std::string_view item = value.substr(0, comma);
      value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
      const auto eq = item.find('=');
      if (eq == std::string_view::npos) continue;
      const std::string key(item.substr(0, eq));
      const std::string_view v = item.substr(eq + 1);
      std::int64_t n = 0;
      std::from_chars(v.data(), v.data() + v.size(), n);
      if (!sums.contains(key)) order.push_back(key);
      sums[key] += n;
      if (key == "expires") expires = n;
      if (key == "avg_ttl") avg_ttl = n;
    }
    // A master's avg_ttl averages over its keys with a TTL: weighted by how many it has. One that says 0 has
    // not sampled any yet and says nothing about the others.
    if (avg_ttl > 0 && expires > 0) {
      ttl_weighted += static_cast<double>(avg_ttl) * static_cast<double>(expires);
      ttl_weight += expires;
    }
  }
  if (sums.contains("avg_ttl"))
    sums["avg_ttl"] =
        ttl_weight > 0 ? std::llround(ttl_weighted / static_cast<double>(ttl_weight)) : std::int64_t{0};
  std::string out;
  for (const auto& k : order) {
    if (!out.empty()) out += ',';
    out += k + "=" + std::to_string(sums[k]);
  }
  return out;
}

bool compose(const Plan& plan, std::span<const std::string_view> node_texts, std::string& out,
             std::string& error) {
  std::vector<std::map<std::string, Fields>> nodes;
  nodes.reserve(node_texts.size());
  for (auto t : node_texts)
    nodes.push_back(parse(t));
  auto section_of_each = [&nodes](const std::string& name) {
    std::vector<const Fields*> each;
    for (const auto& n : nodes) {
      const auto it = n.find(name);
      each.push_back(it == n.end() ? nullptr : &it->second);
    }
    return each;
  };
  out.clear();
  auto open = [&out](std::string_view title) {
    if (!out.empty()) out.append("\r\n");
    out.append("# ");
    out.append(title);
    out.append("\r\n");
  };
  if (plan.sections & kServer) {
    std::vector<std::string_view> versions;
    for (const auto& n : nodes) {
      const auto it = n.find("server");
      const Fields* f = it == n.end() ? nullptr : &it->second;
      const auto v =
          f ? std::find_if(f->begin(), f->end(), [](const auto& kv) { return kv.first == "redis_version"; })
            : Fields::const_iterator();
      if (!f || v == f->end()) {
        error = "a master's INFO server has no redis_version";
        return false;
      }
      versions.push_back(v->second);
    }
    open("Server");
    if (!versions.empty()) out.append("redis_version:" + oldest_version(versions) + "\r\n");
    out.append(plan.server);
  }
  if (plan.sections & kClients) {
    open("Clients");
    out.append(plan.clients);
  }
  if (plan.sections & kMemory) {
    open("Memory");
    out.append(merge_section(section_of_each("memory"), {}));
  }
  if (plan.sections & kStats) {
    open("Stats");
    out.append(merge_section(section_of_each("stats"), plan.own_stats));
  }
  if (plan.sections & kKeyspace) {
    open("Keyspace");
    out.append(merge_keyspaces(section_of_each("keyspace")));
  }
  if (plan.sections & kProxy) {
    open("Proxy");
    out.append(plan.proxy);
  }
  return true;
}

}  // namespace slotshift::proxy::info_merge
