// Hash slots exactly as Redis Cluster computes them: CRC16 (XMODEM) of the key, or of its hash tag, modulo
// 16384.
#pragma once

#include <cstdint>
#include <string_view>

namespace slotshift {

inline constexpr int kSlotCount = 16384;
using Slot = std::uint16_t;

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection, no final xor.
std::uint16_t crc16(std::string_view bytes);

// The part of `key` that decides its slot. Redis's rule: if the key has a '{' and a '}' after it with at
// least one byte between them, only the bytes between the first '{' and the first '}' after it count;
// otherwise the whole key does. So "{}x" and "x{}" hash whole, "{a}{b}" hashes "a", and "{{a}}" hashes "{a".
std::string_view hash_tag(std::string_view key);

// The hash slot of `key` (0..16383). Keys are binary: any byte, including '\0', is part of the key.
inline Slot key_slot(std::string_view key) {
  return static_cast<Slot>(crc16(hash_tag(key)) & (kSlotCount - 1));
}

}  // namespace slotshift
