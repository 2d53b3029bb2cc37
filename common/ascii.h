// Case-insensitive comparison and lower-casing of ASCII names (commands, options), as Redis compares them:
// bytes outside A-Z are left alone, whatever the process's locale.
#pragma once

#include <string>
#include <string_view>

namespace slotshift {

constexpr char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

inline std::string ascii_lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    c = ascii_lower(c);
  return out;
}

}  // namespace slotshift
