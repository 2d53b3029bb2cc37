#include "common/server_info.h"

#include <charconv>

namespace slotshift {
std::string_view info_field(std::string_view info, std::string_view name) {
  std::size_t pos = 0;
  while (pos < info.size()) {
    auto end = info.find('\n', pos);
    if (end == std::string_view::npos) end = info.size();
    std::string_view line = info.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > name.size() && line.starts_with(name) && line[name.size()] == ':')
      return line.substr(name.size() + 1);
    pos = end + 1;
  }
  return {};
}

std::int64_t info_integer(std::string_view info, std::string_view name) {
  const auto text = info_field(info, name);
  std::int64_t v = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty() ? v : -1;
}

namespace {

bool parse_version(std::string_view text, ServerInfo& out) {
  int* parts[3] = {&out.major, &out.minor, &out.patch};
  const char* p = text.data();
  const char* end = text.data() + text.size();
  for (int i = 0; i < 3; ++i) {
    const auto [next, ec] = std::from_chars(p, end, *parts[i]);
    if (ec != std::errc()) return i > 0;
    p = next;
    if (p == end || *p != '.') return i > 0;
    ++p;
  }
  return true;
}

}  // namespace

std::string ServerInfo::name() const {
  return (flavor == Flavor::kValkey ? "Valkey " : "Redis ") + version;
}

int ServerInfo::rdb_version() const {
  if (flavor == Flavor::kValkey) return major >= 9 ? 80 : 11;
  if (major > 7 || (major == 7 && minor >= 4)) return 12;
  if (major == 7 && minor >= 2) return 11;
  if (major == 7) return 10;
  return 9;  // 5.0 to 6.2
}

bool ServerInfo::survives_paused_claim() const {
  if (flavor == Flavor::kValkey) return major > 8 || (major == 8 && minor >= 1);
  return major < 7 || (major == 7 && minor < 2);
}

bool ServerInfo::propagates_lost_slot_deletes() const {
  return flavor == Flavor::kValkey || major > 7 || (major == 7 && minor >= 2);
}

bool parse_server_info(std::string_view info, ServerInfo& out, std::string& error) {
  out = ServerInfo{};
  const auto server_name = info_field(info, "server_name");
  auto version = info_field(info, "valkey_version");
  if (server_name == "valkey" || !version.empty()) {
    out.flavor = ServerInfo::Flavor::kValkey;
  } else {
    version = info_field(info, "redis_version");
  }
  if (version.empty() || !parse_version(version, out)) {
    error = "INFO server names no version";
    return false;
  }
  out.version = std::string(version);
  return true;
}

bool payloads_compatible(const ServerInfo& source, const ServerInfo& target, std::string& why) {
  const int from = source.rdb_version(), to = target.rdb_version();
  const bool cross = source.flavor != target.flavor;
  // Across Redis and Valkey only RDB 11 and older is common ground: Valkey's 80 is not "newer than" Redis's
  // 12 in any useful sense, the formats diverged after 11.
  const bool refused = from > to || (cross && from > 11);
  if (!refused) return true;
  why =
      "the source runs " + source.name() + " (RDB " + std::to_string(from) + ") and the target " +
      target.name() + " (RDB " + std::to_string(to) + "): the target would refuse the source's values (" +
      (cross ? "the two servers' formats diverged after RDB 11" : "a newer format than its own") +
      "). Move to a node that runs the same server as the source or a newer one, or upgrade the target first";
  return false;
}

}  // namespace slotshift
