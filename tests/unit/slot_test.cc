#include "common/slot.h"

#include <doctest/doctest.h>

#include <string>

using slotshift::crc16;
using slotshift::hash_tag;
using slotshift::key_slot;

TEST_CASE("crc16 is CRC16-CCITT XMODEM") {
  CHECK(crc16("") == 0);
  CHECK(crc16("123456789") == 0x31C3);  // the XMODEM check value
  CHECK(crc16(std::string("\0", 1)) == 0);
  CHECK(crc16("A") == 0x58E5);
}

TEST_CASE("slots of plain keys match Redis") {
  // Values from CLUSTER KEYSLOT of redis-server 7.0.
  CHECK(key_slot("foo") == 12182);
  CHECK(key_slot("bar") == 5061);
  CHECK(key_slot("") == 0);
  CHECK(key_slot("123456789") == 12739);
}

TEST_CASE("hash tags follow Redis's rules") {
  CHECK(hash_tag("{user1000}.following") == "user1000");
  CHECK(key_slot("{user1000}.following") == key_slot("{user1000}.followers"));
  CHECK(hash_tag("foo{}{bar}") == "foo{}{bar}");  // empty first tag: whole key
  CHECK(hash_tag("foo{{bar}}zap") == "{bar");     // first '{', then the first '}' after it
  CHECK(hash_tag("foo{bar}{zap}") == "bar");      // only the first tag counts
  CHECK(hash_tag("{}") == "{}");
  CHECK(hash_tag("}{a}") == "a");
  CHECK(hash_tag("{a") == "{a");
  CHECK(hash_tag("a}") == "a}");
  CHECK(hash_tag("{a}") == "a");
  CHECK(key_slot("{a}") == key_slot("a"));
}

TEST_CASE("keys are binary") {
  const std::string with_nul("a\0b", 3);
  CHECK(hash_tag(with_nul) == with_nul);
  CHECK(key_slot(with_nul) != key_slot("a"));
  const std::string tagged("{\0}x", 4);
  CHECK(hash_tag(tagged) == std::string("\0", 1));
  const std::string high("\xff\xfe{\x80}", 5);
  CHECK(hash_tag(high) == "\x80");
}
