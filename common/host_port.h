// "HOST:PORT" as users write it on command lines and as Redis writes it in MOVED/ASK and CLUSTER replies.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift {

struct HostPort {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
  friend bool operator==(const HostPort&, const HostPort&) = default;
};

// Parses "HOST:PORT" (IPv6 as "[::1]:7000"). Returns nullopt and sets `error` for anything else.
std::optional<HostPort> parse_host_port(std::string_view text, std::string& error);

// "HOST:PORT[,HOST:PORT...]", as --seed and similar flags take them. nullopt (and `error`) if any is
// malformed.
std::optional<std::vector<HostPort>> parse_host_port_list(std::string_view text, std::string& error);

}  // namespace slotshift
