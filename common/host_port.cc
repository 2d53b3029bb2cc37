#include "common/host_port.h"

#include <charconv>

namespace slotshift {

std::optional<HostPort> parse_host_port(std::string_view text, std::string& error) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) {
    error = "expected HOST:PORT, got '" + std::string(text) + "'";
    return std::nullopt;
  }
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  const auto digits = text.substr(colon + 1);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || end != digits.data() + digits.size() || port <= 0 || port > 65535) {
    error = "bad port in '" + std::string(text) + "'";
    return std::nullopt;
  }
  return HostPort{std::string(host), port};
}

std::optional<std::vector<HostPort>> parse_host_port_list(std::string_view text, std::string& error) {
  std::vector<HostPort> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    auto comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    auto one = parse_host_port(text.substr(pos, comma - pos), error);
    if (!one) return std::nullopt;
    out.push_back(std::move(*one));
    pos = comma + 1;
  }
  return out;
}

}  // namespace slotshift
