// libFuzzer target for the RDB reader and the value decoders behind rebuild_commands.
//
// The first input byte picks how the input is delivered (1 to 64 bytes per read, or all at once), so that
// every buffer boundary is exercised, as hiredis's reply fuzzer does. The second byte says what the rest is:
//   'V'   one value for rebuild_commands: a type byte, a format byte (0: REDIS0010, 1: REDIS0012,
//         2: VALKEY080), then the value's bytes
//   else  an RDB file (the second byte is its first byte), read to the end; every other key is kept, every
//         kept value is turned into a DUMP payload and into commands
// Any crash, sanitizer report, or allocation far beyond the input (libFuzzer's -rss_limit_mb) is a bug.
//
// Build and run: see README.md here.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/rdb.h"

using namespace slotshift;

namespace {

void rebuild(std::string_view key, std::uint8_t type, std::string_view value, const rdb::Header& h) {
  std::string error;
  std::size_t args = 0;
  rdb::rebuild_commands(
      key, type, value, h, 64, [&](std::vector<std::string>&& c) { args += c.size(); }, error);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t chunk = data[0] >= 0xf0 ? SIZE_MAX : (data[0] % 64) + 1;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  if (in[0] == 'V') {
    if (in.size() < 3) return 0;
    static const rdb::Header kHeaders[] = {
        {rdb::Flavor::kRedis, 10}, {rdb::Flavor::kRedis, 12}, {rdb::Flavor::kValkey, 80}};
    rebuild("k", static_cast<std::uint8_t>(in[1]), in.substr(3),
            kHeaders[static_cast<std::uint8_t>(in[2]) % 3]);
    return 0;
  }

  rdb::MemorySource source(in, chunk);
  rdb::Limits limits;
  limits.max_value_bytes = 16 << 20;
  limits.max_key_bytes = 1 << 20;
  rdb::Reader reader(source, limits);
  if (!reader.read_header()) return 0;
  rdb::Entry e;
  bool keep = false;
  while (reader.next(e, [&](int, std::string_view) { return keep = !keep; }) == rdb::Result::kEntry) {
    if (!e.kept) continue;
    const auto payload =
        rdb::dump_payload(e.type, e.value, static_cast<std::uint16_t>(reader.header().version));
    if (payload.size() != e.value.size() + 11) __builtin_trap();
    rebuild(e.key, e.type, e.value, reader.header());
  }
  (void)reader.unread();
  return 0;
}
