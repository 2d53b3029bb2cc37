// Inputs for the session fuzzer (layout in session_harness.h), made without coverage feedback: commands drawn
// from the command table with right and wrong arities, the commands the proxy splits, fans out or answers
// itself, transactions, inline commands, protocol edge cases (huge bulk and count headers, bad CRLFs), random
// bytes, and splices and mutations of earlier inputs. Deterministic for a seed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift::fuzz {

class InputGenerator {
 public:
  explicit InputGenerator(std::uint64_t seed, std::size_t max_len = 64 * 1024);

  // The next input: a fresh one, a mutation or splice of a remembered one, or random bytes.
  std::string next();
  // Keeps `input` among those that mutations and splices start from (the last 64).
  void remember(std::string input);

 private:
  std::uint64_t rand();
  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rand() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }

  std::string fresh();
  std::string mutate(std::string input);
  std::string header(std::size_t connections, std::size_t body_size);
  std::string stream();
  // One item of a stream: usually a whole command, sometimes several, sometimes not RESP at all.
  std::string item();
  std::vector<std::string> table_command();
  std::string proxy_command();  // as wire bytes (a transaction is several commands)
  std::string protocol_edge();
  std::string inline_command();
  std::string arg();
  std::string key();
  std::string random_bytes(std::size_t max);
  std::string wire(const std::vector<std::string>& argv);

  std::uint64_t state_;
  std::size_t max_len_;
  std::deque<std::string> pool_;
};

}  // namespace slotshift::fuzz
