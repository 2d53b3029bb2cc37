#include "common/crc64.h"

#include <array>
#include <cstring>

namespace slotshift {
namespace {

// The polynomial bit-reversed, as a right-shifting (reflected) CRC uses it.
constexpr std::uint64_t kReflectedPoly = [] {
  constexpr std::uint64_t poly = 0xad93d23594c935a9ull;
  std::uint64_t r = 0;
  for (int i = 0; i < 64; ++i) {
    if (poly & (1ull << i)) r |= 1ull << (63 - i);
  }
  return r;
}();

constexpr std::size_t kSlices = 16;
using Tables = std::array<std::array<std::uint64_t, 256>, kSlices>;

// tables[0][b] is the CRC of the single byte b; tables[k][b] is the CRC of b followed by k zero bytes, so
// that sixteen input bytes can be folded in with sixteen independent lookups.
constexpr Tables make_tables() {
  Tables t{};
  for (unsigned b = 0; b < 256; ++b) {
    std::uint64_t crc = b;
    for (int bit = 0; bit < 8; ++bit)
      crc = (crc & 1) ? (crc >> 1) ^ kReflectedPoly : crc >> 1;
    t[0][b] = crc;
  }
  for (unsigned b = 0; b < 256; ++b) {
    for (std::size_t k = 1; k < kSlices; ++k)
      t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
  return t;
}

constexpr Tables kTables = make_tables();

// The catalogue check value, computed byte by byte at compile time.
constexpr std::uint64_t crc64_bytewise(std::string_view s) {
  std::uint64_t crc = 0;
  for (char c : s)
    crc = kTables[0][(crc ^ static_cast<unsigned char>(c)) & 0xff] ^ (crc >> 8);
  return crc;
}
static_assert(crc64_bytewise("123456789") == 0xe9c6d914c4b8d9caull);

}  // namespace

std::uint64_t crc64(std::uint64_t crc, const void* bytes, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  const auto& t = kTables;
  while (n >= 16) {
    std::uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + 8, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    a = __builtin_bswap64(a);
    b = __builtin_bswap64(b);
#endif
    a ^= crc;
    crc = t[15][a & 0xff] ^ t[14][(a >> 8) & 0xff] ^ t[13][(a >> 16) & 0xff] ^ t[12][(a >> 24) & 0xff] ^
          t[11][(a >> 32) & 0xff] ^ t[10][(a >> 40) & 0xff] ^ t[9][(a >> 48) & 0xff] ^ t[8][a >> 56] ^
          t[7][b & 0xff] ^ t[6][(b >> 8) & 0xff] ^ t[5][(b >> 16) & 0xff] ^ t[4][(b >> 24) & 0xff] ^
          t[3][(b >> 32) & 0xff] ^ t[2][(b >> 40) & 0xff] ^ t[1][(b >> 48) & 0xff] ^ t[0][b >> 56];
    p += 16;
    n -= 16;
  }
  while (n--)
    crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

}  // namespace slotshift
