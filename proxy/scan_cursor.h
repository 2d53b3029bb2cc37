// The cursor of a SCAN over the whole cluster, as the client sees it: one unsigned 64-bit number (clients
// parse it as such) that says which master is being walked and where that master's own walk is.
//
//   bits 0-13   a slot of the master being walked (where its walk began): the master is found again as that
//               slot's owner
//   bits 14-29  a tag of that master's address (never 0)
//   bits 30-63  the master's own SCAN cursor
//
// Masters are walked in slot order: the owner of slot 0 (or the first served), then the owner of the next
// slot that another master serves, and so on, so the walk ends. Naming a master by a slot rather than by its
// place in a list keeps a cursor valid when masters are added, removed or fail over: the owner of the slot is
// asked again. When the slot's owner is not the master the cursor was made on (a failover, a move of that
// slot), its walk starts again from 0: keys may then be returned twice, which SCAN allows, but none present
// through the whole scan is skipped because a node's position changed. The tag tells the two apart with a
// chance of a collision of one in 65,535.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/slot.h"

namespace slotshift::proxy::scan_cursor {

inline constexpr int kSlotBits = 14;
inline constexpr int kTagBits = 16;
inline constexpr int kNodeShift = kSlotBits + kTagBits;
// The largest cursor of a node that fits (34 bits: a hash table of 2^34 buckets).
inline constexpr std::uint64_t kMaxNodeCursor = (std::uint64_t{1} << (64 - kNodeShift)) - 1;

struct Position {
  Slot slot = 0;          // a slot of the master, where its walk began
  std::uint16_t tag = 0;  // 0 in the client's first cursor: start with the first master
  std::uint64_t node_cursor = 0;
};

inline Position decode(std::uint64_t cursor) {
  return {static_cast<Slot>(cursor & ((1u << kSlotBits) - 1)),
          static_cast<std::uint16_t>((cursor >> kSlotBits) & ((1u << kTagBits) - 1)), cursor >> kNodeShift};
}

// `p.tag` must not be 0 and `p.node_cursor` at most kMaxNodeCursor.
inline std::uint64_t encode(const Position& p) {
  return (p.node_cursor << kNodeShift) | (std::uint64_t{p.tag} << kSlotBits) | p.slot;
}

// A tag in 1..65535 for a node's address (FNV-1a, folded).
inline std::uint16_t tag_of(std::string_view address) {
  std::uint32_t h = 2166136261u;
  for (const char c : address) {
    h ^= static_cast<unsigned char>(c);
    h *= 16777619u;
  }
  const auto folded = static_cast<std::uint16_t>((h >> 16) ^ (h & 0xFFFF));
  return folded == 0 ? 1 : folded;
}

}  // namespace slotshift::proxy::scan_cursor
