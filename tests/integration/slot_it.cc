// key_slot() against CLUSTER KEYSLOT of a real node, for generated keys: plain, tagged, empty tags, nested
// braces, NUL and high bytes.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "common/slot.h"
#include "tests/integration/fixture.h"

using namespace slotshift;

namespace {

std::string random_key(std::mt19937_64& rng, int i) {
  static const std::string alphabet = "{}{}ab\0\xff\x80z09_:";
  std::uniform_int_distribution<int> len(0, 24), pick(0, static_cast<int>(alphabet.size()) - 1), byte(0, 255);
  std::string key;
  const int n = len(rng);
  switch (i % 4) {
    case 0:  // any bytes at all
      for (int j = 0; j < n; ++j)
        key.push_back(static_cast<char>(byte(rng)));
      break;
    case 1:  // dense in braces, to hit every hash-tag rule
      for (int j = 0; j < n; ++j)
        key.push_back(alphabet[static_cast<std::size_t>(pick(rng))]);
      break;
    case 2:  // realistic tagged keys
      key = "user:{" + std::to_string(i % 997) + "}:" + std::to_string(i);
      break;
    default:  // plain keys
      key = "key:" + std::to_string(i);
  }
  return key;
}

}  // namespace

TEST_CASE("key_slot agrees with CLUSTER KEYSLOT for 120,000 generated keys") {
  auto& cluster = test::shared_cluster(3, 0);
  test::Connection conn(cluster.nodes().front());
  std::mt19937_64 rng(20261125);
  std::vector<std::string> keys = {
      "", "{", "}", "{}", "}{", "{{}}", "{a}", "a{b}c", std::string("\0", 1), std::string("{\0}", 3)};
  for (int i = 0; static_cast<int>(keys.size()) < 120000; ++i)
    keys.push_back(random_key(rng, i));

  int checked = 0, mismatched = 0;
  for (std::size_t start = 0; start < keys.size(); start += 2000) {
    std::vector<std::vector<std::string>> batch;
    for (std::size_t i = start; i < std::min(keys.size(), start + 2000); ++i) {
      batch.push_back({"CLUSTER", "KEYSLOT", keys[i]});
    }
    const auto replies = conn.pipeline(batch);
    for (std::size_t j = 0; j < replies.size(); ++j) {
      REQUIRE(replies[j]->type == REDIS_REPLY_INTEGER);
      const auto& key = keys[start + j];
      if (static_cast<long long>(key_slot(key)) != replies[j]->integer && ++mismatched <= 10) {
        FAIL_CHECK("slot of key (" << key.size() << " bytes) '" << key << "': ours " << key_slot(key)
                                   << ", server " << replies[j]->integer);
      }
      ++checked;
    }
  }
  CHECK(checked == 120000);
  CHECK(mismatched == 0);
}
