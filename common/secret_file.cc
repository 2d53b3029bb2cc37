#include "common/secret_file.h"

#include <algorithm>
#include <fstream>

namespace slotshift {

std::string read_secret_file(const std::string& path, std::string& secret) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot read " + path;
  // The secret is the first line; a file much longer than a secret is the wrong file.
  constexpr std::size_t kMaxSecret = 4096;
  std::string text(kMaxSecret + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxSecret) return path + " is longer than " + std::to_string(kMaxSecret) + " bytes";
  text.resize(std::min(text.find('\n'), text.size()));
  if (!text.empty() && text.back() == '\r') text.pop_back();
  if (text.empty()) return path + " is empty";
  secret = std::move(text);
  return "";
}

}  // namespace slotshift
